"""What the jobs need from a language model, whichever serves it: n samples of an answer to a
conversation, and n continuations of a partial assistant message."""

from dataclasses import dataclass
from typing import Protocol

Messages = list[dict[str, str]]


class BackendError(Exception):
    """A request failed for good (retries spent, or refused): its record fails, the job goes on."""


class BackendUnavailable(Exception):
    """The backend cannot serve this job at all (unreachable, wrong model): the job stops before it starts."""


@dataclass(frozen=True)
class Sampling:
    """Generation settings, fixed for a whole job."""

    temperature: float = 0.7
    max_tokens: int = 2048
    top_p: float = 1.0


@dataclass
class Usage:
    """What a job has asked of its backend, for the final summary."""

    requests: int = 0
    retries: int = 0
    completions_requested: int = 0
    completions_received: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Backend(Protocol):
    model: str
    usage: Usage

    async def start(self) -> None:
        """Check that the model can be used; raises BackendUnavailable with the reason if not."""

    async def chat(self, messages: Messages, n: int) -> list[str]:
        """n sampled assistant replies to `messages`."""

    async def continue_assistant(self, messages: Messages, partial: str, n: int) -> list[str]:
        """n continuations of the assistant's reply to `messages` that starts with `partial` (without it)."""

    async def close(self) -> None: ...


def continuation_prompt(tokenizer, messages: Messages, partial: str) -> str:
    """The conversation as text, ending inside the assistant's turn right after `partial` (no end-of-turn):
    generating from it continues the assistant's own text rather than starting a new answer."""
    return tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": partial}], tokenize=False, continue_final_message=True
    )
