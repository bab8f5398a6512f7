"""Qwen2.5-Math-PRM input format: text in, token ids and separator positions out.

This is the model card's computation, kept in one place so that serving, training
and evaluation format conversations identically.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.prm.errors import InputTooLong, InvalidInput

if TYPE_CHECKING:  # transformers is slow to import, and the command line only needs split_steps from here
    from transformers import PreTrainedTokenizerBase

STEP_SEPARATOR = "<extra_0>"
DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class ScoringInput:
    """One solution to score: its step texts after the problem."""

    problem: str
    steps: list[str]
    system: str | None = None


@dataclass(frozen=True)
class EncodedItem:
    """Token ids of one conversation; the model scores it at each separator position."""

    input_ids: list[int]
    separator_positions: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


class PRMFormatter:
    """Renders (system, problem, steps) with the checkpoint's chat template and tokenises it."""

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", max_length: int):
        separator_id = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
        if separator_id is None or separator_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {STEP_SEPARATOR} token: this is not a step-separated PRM")
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.separator_id = separator_id
        self.max_length = max_length

    def render(self, item: ScoringInput) -> str:
        """The conversation text exactly as the model card builds it."""
        messages = [
            {"role": "system", "content": DEFAULT_SYSTEM if item.system is None else item.system},
            {"role": "user", "content": item.problem},
            {"role": "assistant", "content": STEP_SEPARATOR.join(item.steps) + STEP_SEPARATOR},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, item: ScoringInput, field: str = "") -> EncodedItem:
        """Validate, render and tokenise one item; `field` prefixes error locations (e.g. `items[3]`)."""
        validate(item, field)
        input_ids = self.tokenizer(self.render(item))["input_ids"]
        positions = [i for i, token in enumerate(input_ids) if token == self.separator_id]
        if len(positions) != len(item.steps):
            raise InvalidInput(
                _join(field, "steps"),
                f"the text produced {len(positions)} step separators for {len(item.steps)} steps; "
                "a step or the problem contains text that tokenises to the separator",
            )
        if len(input_ids) > self.max_length:
            raise InputTooLong(_join(field, "steps"), len(input_ids), self.max_length)
        return EncodedItem(input_ids, positions)


def split_steps(text: str) -> list[str]:
    """A raw solution's steps: parts between blank lines, stripped, empty parts dropped."""
    return [part.strip() for part in text.split("\n\n") if part.strip()]


def validate(item: ScoringInput, field: str = "") -> None:
    """Reject what cannot give exactly one score per step."""
    validate_context(item.problem, item.system, field)
    if not item.steps:
        raise InvalidInput(_join(field, "steps"), "must contain at least one step")
    for index, step in enumerate(item.steps):
        if STEP_SEPARATOR in step:
            raise InvalidInput(_join(field, f"steps[{index}]"), f"must not contain the step separator {STEP_SEPARATOR}")


def validate_context(problem: str, system: str | None, field: str = "") -> None:
    """The problem and system prompt: what every solution to one problem shares."""
    if not problem.strip():
        raise InvalidInput(_join(field, "problem"), "must not be empty or whitespace")
    if STEP_SEPARATOR in problem:
        raise InvalidInput(_join(field, "problem"), f"must not contain the step separator {STEP_SEPARATOR}")
    if system is not None and STEP_SEPARATOR in system:
        raise InvalidInput(_join(field, "system"), f"must not contain the step separator {STEP_SEPARATOR}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
