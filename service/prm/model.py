"""Qwen2ForProcessRewardModel, implemented natively on transformers' Qwen2Model.

The checkpoint's own remote code is never executed: this class reproduces its
layout (`model.*` backbone, `score.0` Linear(H, H), ReLU, `score.2` Linear(H, 2))
and loads the safetensors weights into it. Its forward is the model card's (padded batches); serving
runs service.prm.forward over the same weights, and the training losses live in
service.jobs.train.objective.
"""

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput

NUM_LABELS = 2  # Qwen2.5-Math-PRM's config has no num_labels; the head always has two logits


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    # The head is tiny; keeping it in fp32 makes scores independent of the backbone dtype.
    _keep_in_fp32_modules_strict = ["score"]

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.model = Qwen2Model(config)
        hidden = config.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, NUM_LABELS))
        self.post_init()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> TokenClassifierOutput:
        """Two logits at every position (padded batches), as the checkpoint's remote code computes them."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return TokenClassifierOutput(logits=self.score(outputs.last_hidden_state.float()))
