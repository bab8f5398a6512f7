"""How queued sequences become batches.

Batches are packed (no padding), so a batch costs its real token count and the
arrival order can be kept: first come, first served, until the token budget is met.
"""

from collections import deque
from collections.abc import Sized
from typing import TypeVar

T = TypeVar("T", bound=Sized)


def take_batch(queue: deque[T], max_tokens: int) -> list[T]:
    """Pop the longest queue head whose total length fits `max_tokens` (at least one item)."""
    batch = [queue.popleft()]
    tokens = len(batch[0])
    while queue and tokens + len(queue[0]) <= max_tokens:
        tokens += len(queue[0])
        batch.append(queue.popleft())
    return batch
