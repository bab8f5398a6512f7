"""The training objective: the served PRM class plus the losses only `prm train` computes.

- the paper's hard-label loss: cross-entropy of the two head logits at step separators only;
- `--lm-loss`: an auxiliary next-token loss through the input embeddings;
- `--digit-check`: the separator label made token-level on the score head.

They run in the forward of a subclass rather than in the Trainer's `compute_loss` because under FSDP
and DeepSpeed ZeRO-3 parameters are whole only inside the forward of the model the Trainer wraps, and
these losses read the score head, the final norm and the input embeddings. The subclass adds no
parameters, so what it saves is exactly a `Qwen2ForProcessRewardModel` checkpoint.
"""

import torch
from torch.nn.functional import cross_entropy
from transformers.modeling_outputs import TokenClassifierOutput

from service.prm.model import NUM_LABELS, Qwen2ForProcessRewardModel

IGNORE_INDEX = -100  # label of every token that is not a step separator
LM_LOSS_LAYER = -2  # the hidden state the auxiliary next-token loss reads: the layer below the top one


class Qwen2PRMForTraining(Qwen2ForProcessRewardModel):
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        lm_labels: torch.Tensor | None = None,
        check_labels: torch.Tensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        """The served logits and, with `labels` (0/1 at separators, IGNORE_INDEX elsewhere), the loss.

        The Trainer passes `num_items_in_batch` (labelled positions over all accumulated micro-batches), so
        that gradient accumulation averages over separators, not over micro-batches. `lm_labels` adds the
        next-token loss of `--lm-loss`, `check_labels` the digit check of `--digit-check`.
        """
        if labels is None:
            return super().forward(input_ids, attention_mask)
        with_lm_loss = lm_labels is not None
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=with_lm_loss
        )
        logits = self.score(outputs.last_hidden_state.float())
        labels = labels.to(logits.device)
        flat_logits, flat_labels = logits.view(-1, NUM_LABELS), labels.view(-1)
        if num_items_in_batch is None:
            loss = cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX)
        else:
            loss = cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
            loss = loss / num_items_in_batch
        if with_lm_loss:
            below_top = self.model.norm(outputs.hidden_states[LM_LOSS_LAYER])
            loss = loss + self._next_token_loss(below_top, lm_labels, labels, num_items_in_batch)
        if check_labels is not None:
            top = outputs.last_hidden_state
            loss = loss + self._digit_check_loss(top, check_labels, labels, num_items_in_batch)
        return TokenClassifierOutput(loss=loss, logits=logits)

    def _digit_check_loss(self, top, check_labels, labels, num_items_in_batch) -> torch.Tensor:
        """The separator label made token-level, on the score head where separators read it: is the solution
        still right at this token? 1 throughout the steps labelled right; in a digit-check copy, 0 from the
        replaced digit to its step's separator. So the model learns, position by position, to compare a
        written result with the one it expects and to carry a failed comparison to the separator, which the
        separator label alone teaches a small model too slowly. Averaged like the next-token loss."""
        check_labels = check_labels.to(top.device)
        checked = check_labels != IGNORE_INDEX
        if not checked.any():
            return top.new_zeros((), dtype=torch.float32)
        # The head on the checked rows, not `logits` indexed: the same bits as the runs the README reports.
        loss = cross_entropy(self.score(top[checked].float()), check_labels[checked])
        return _share_of_separators(loss, labels, num_items_in_batch)

    def _next_token_loss(self, hidden, lm_labels, labels, num_items_in_batch) -> torch.Tensor:
        """Predict each token of the steps labelled right from the one before it, through the input
        embeddings: dense supervision that teaches a small model trained from scratch the arithmetic and
        copying a separator label conveys one bit at a time. `hidden` is the layer below the top one, so
        that the top layer can compare what the model expected with what a step wrote and carry the
        difference to the separator (read from the top, the expectation would come too late to be
        compared). No parameters of its own, so nothing of it is saved. Averaged over this micro-batch's
        targets and weighted by its share of the separators, so that gradient accumulation averages it as
        it does the separator loss."""
        targets = lm_labels[:, 1:].to(hidden.device)
        predicted = targets != IGNORE_INDEX
        if not predicted.any():
            return hidden.new_zeros((), dtype=torch.float32)
        token_logits = self._token_logits(hidden[:, :-1][predicted])
        loss = cross_entropy(token_logits, targets[predicted])
        return _share_of_separators(loss, labels, num_items_in_batch)

    def _token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float() @ self.model.embed_tokens.weight.float().T

    def next_token_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """What the auxiliary next-token loss trains the model to predict at every position of unpadded
        `input_ids`: for probing whether a trained PRM knows the arithmetic it should check."""
        outputs = self.model(input_ids=input_ids, use_cache=False, output_hidden_states=True)
        return self._token_logits(self.model.norm(outputs.hidden_states[LM_LOSS_LAYER]))


def _share_of_separators(loss, labels, num_items_in_batch) -> torch.Tensor:
    if num_items_in_batch is not None:
        loss = loss * (labels != IGNORE_INDEX).sum() / num_items_in_batch
    return loss
