"""Input errors raised while turning a request into model inputs.

They name the offending field so the HTTP layer can answer 4xx without knowing
anything about tokenisation.
"""


class InvalidInput(ValueError):
    """The input can never be scored as given (HTTP 422)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class InputTooLong(InvalidInput):
    """The formatted conversation exceeds the model's maximum length (HTTP 413)."""

    def __init__(self, field: str, length: int, limit: int, parts: str):
        super().__init__(
            field,
            f"the formatted conversation is {length} tokens long ({parts}), "
            f"more than the model's maximum of {limit}; nothing is truncated, so shorten it",
        )
        self.length = length
        self.limit = limit


class DeviceOutOfMemory(RuntimeError):
    """A batch did not fit in device memory; the engine retries smaller batches (HTTP 507 if one item alone)."""
