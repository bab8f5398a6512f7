"""An independent implementation of the Qwen2.5-Math-PRM-7B model card's scoring code.

Written from the card, not from the service: transformers' own Qwen2Model (eager
attention, one unpadded sequence at a time) plus the head applied by hand from the
safetensors weights, and the card's `make_step_rewards`. The service must agree with it.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen2Model

CARD_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class ModelCardPRM:
    def __init__(self, path: Path):
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.backbone, info = Qwen2Model.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
        assert not info["missing_keys"], info
        self.backbone.eval()
        weights = {}
        for file in Path(path).glob("*.safetensors"):
            weights.update(load_file(file))
        self.head = [weights[f"score.{i}.{p}"].float() for i in (0, 2) for p in ("weight", "bias")]

    def conversation_text(self, problem: str, steps: list[str], system: str = CARD_SYSTEM) -> str:
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": problem},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def conversation(self, problem: str, steps: list[str], system: str = CARD_SYSTEM) -> torch.Tensor:
        return self.tokenizer.encode(self.conversation_text(problem, steps, system), return_tensors="pt")

    @torch.no_grad()
    def step_rewards(self, problem: str, steps: list[str], system: str = CARD_SYSTEM) -> list[float]:
        input_ids = self.conversation(problem, steps, system)
        hidden = self.backbone(input_ids=input_ids).last_hidden_state
        w0, b0, w2, b2 = self.head
        logits = F.linear(F.relu(F.linear(hidden, w0, b0)), w2, b2)
        step_sep_id = self.tokenizer.encode("<extra_0>")[0]
        token_masks = input_ids == step_sep_id
        return make_step_rewards(logits, token_masks)[0]


def make_step_rewards(logits: torch.Tensor, token_masks: torch.Tensor) -> list[list[float]]:
    """The model card's function, as published."""
    probabilities = F.softmax(logits, dim=-1)
    probabilities = probabilities * token_masks.unsqueeze(-1)
    all_scores_res = []
    for i in range(probabilities.size(0)):
        sample = probabilities[i]
        positive_probs = sample[sample != 0].view(-1, 2)[:, 1]
        all_scores_res.append(positive_probs.cpu().tolist())
    return all_scores_res
