"""Qwen2.5-Math-PRM input format: text in, token ids and separator positions out.

This is the model card's computation, kept in one place so that serving, training
and evaluation format conversations identically.
"""

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.prm.errors import InputTooLong, InvalidInput
from service.prm.pieces import conversation_tokenizer

if TYPE_CHECKING:  # transformers is slow to import, and the command line only needs split_steps from here
    from transformers import PreTrainedTokenizerBase

STEP_SEPARATOR = "<extra_0>"
DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# JSON can carry "\\ud800"; such a string cannot be encoded as UTF-8, so no tokenizer takes it.
_SURROGATE = re.compile("[\\ud800-\\udfff]")


@dataclass(frozen=True)
class ScoringInput:
    """One solution to score: its step texts after the problem. Also a `/score_steps` item as it arrives: the
    API validates request bodies into this very type (service.api.schemas), refusing unknown fields."""

    __pydantic_config__ = {"extra": "forbid"}  # read by pydantic only; JSON gives no loose types to coerce

    problem: str  # the math problem, as the user turn
    steps: list[str]  # the solution's steps; one score comes back per step
    system: str | None = None  # the system prompt; None: the Qwen2.5-Math one


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
        # The tokens a conversation's structure turns on (separators, chat-template markers): where a
        # prefix that later conversations may continue can end (service.prm.prefix_cache).
        self.boundary_ids = frozenset(tokenizer.all_special_ids) | {separator_id}
        sample = self.render(ScoringInput("What is 12 * 3?", ["12 * 3 = 36.", "The answer is \\boxed{36}."]))
        self._tokenize = conversation_tokenizer(tokenizer, sample)

    def render(self, item: ScoringInput) -> str:
        """The conversation text exactly as the model card builds it."""
        messages = [
            {"role": "system", "content": DEFAULT_SYSTEM if item.system is None else item.system},
            {"role": "user", "content": item.problem},
            {"role": "assistant", "content": STEP_SEPARATOR.join(item.steps) + STEP_SEPARATOR},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, item: ScoringInput, field: str = "", context_checked: bool = False) -> EncodedItem:
        """Validate, render and tokenise one item; `field` prefixes error locations (e.g. `items[3]`).

        `context_checked`: the caller has already run `validate_context` on this problem and system prompt
        (candidates of one /rerank problem), so only the steps are checked here."""
        validate(item, field, context_checked)
        input_ids = self._tokenize(self.render(item))
        positions = [i for i, token in enumerate(input_ids) if token == self.separator_id]
        if len(positions) != len(item.steps):
            raise InvalidInput(
                _join(field, "steps"),
                f"the text produced {len(positions)} step separators for {len(item.steps)} steps; "
                "a step or the problem contains text that tokenises to the separator",
            )
        if len(input_ids) > self.max_length:
            raise self._too_long(item, field, len(input_ids))
        return EncodedItem(input_ids, positions)

    def encode_formatted(
        self, text_or_ids: str | list[int], field: str, add_special_tokens: bool = True
    ) -> EncodedItem:
        """An already formatted conversation, as vLLM's /pooling takes it (the chat template applied, a
        separator after each step): text tokenised as it is, or token ids; scored at every separator."""
        if isinstance(text_or_ids, str):
            _check_text(field, text_or_ids, may_be_empty=False, separator_allowed=True)
            input_ids = self.tokenizer(text_or_ids, add_special_tokens=add_special_tokens)["input_ids"]
        else:
            input_ids = text_or_ids
            if not input_ids:
                raise InvalidInput(field, "must not be empty")
            vocabulary = len(self.tokenizer)
            bad = next((i for i, token in enumerate(input_ids) if not 0 <= token < vocabulary), None)
            if bad is not None:
                raise InvalidInput(f"{field}[{bad}]", f"is {input_ids[bad]}, not a token id (0 to {vocabulary - 1})")
        if len(input_ids) > self.max_length:
            raise InputTooLong(field, len(input_ids), self.max_length, "as given")
        return EncodedItem(input_ids, [i for i, token in enumerate(input_ids) if token == self.separator_id])

    def _too_long(self, item: ScoringInput, field: str, length: int) -> InputTooLong:
        """The error names the part that made the conversation long: the problem, the system prompt or the steps."""
        system = DEFAULT_SYSTEM if item.system is None else item.system
        count = {
            "problem": self._tokens(item.problem),
            "system": self._tokens(system),
            "steps": self._tokens(STEP_SEPARATOR.join(item.steps) + STEP_SEPARATOR),
        }
        longest = max(count, key=count.get)
        parts = f"problem {count['problem']}, system prompt {count['system']}, steps {count['steps']}"
        return InputTooLong(_join(field, longest), length, self.max_length, parts)

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def split_steps(text: str) -> list[str]:
    """A raw solution's steps: parts between blank lines, stripped, empty parts dropped."""
    return [part.strip() for part in text.split("\n\n") if part.strip()]


def validate(item: ScoringInput, field: str = "", context_checked: bool = False) -> None:
    """Reject what cannot give exactly one meaningful score per step.

    Every step needs text: an empty or whitespace-only step has nothing for the model to judge, and
    raw text split on blank lines never yields one, so both endpoints refuse it alike.
    """
    if not context_checked:
        validate_context(item.problem, item.system, field)
    if not item.steps:
        raise InvalidInput(_join(field, "steps"), "must contain at least one step")
    for index, step in enumerate(item.steps):
        _check_text(_join(field, f"steps[{index}]"), step, may_be_empty=False)


def validate_context(problem: str, system: str | None, field: str = "") -> None:
    """The problem and system prompt: what every solution to one problem shares."""
    _check_text(_join(field, "problem"), problem, may_be_empty=False)
    if system is not None:
        _check_text(_join(field, "system"), system, may_be_empty=True)


def _check_text(field: str, text: str, may_be_empty: bool, separator_allowed: bool = False) -> None:
    if not may_be_empty and not text.strip():
        raise InvalidInput(field, "must not be empty or whitespace")
    if not separator_allowed and STEP_SEPARATOR in text:
        raise InvalidInput(field, f"must not contain the step separator {STEP_SEPARATOR}")
    if surrogate := _SURROGATE.search(text):
        at = surrogate.start()
        raise InvalidInput(field, f"has a lone surrogate (U+{ord(text[at]):04X}) at character {at}: not Unicode text")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
