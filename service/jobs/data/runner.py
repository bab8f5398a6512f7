"""Driving a job over its pending records: bounded concurrency, a progress bar, a summary line."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from service.jobs.data.backends import BackendError, Usage
from service.jobs.data.resumable import JsonlOutput

logger = logging.getLogger(__name__)


@dataclass
class JobStats:
    name: str
    already_done: int = 0
    written: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self, usage: Usage | None = None) -> str:
        """One line: records, completions, tokens, failures, wall time."""
        parts = [f"{self.written} records written ({self.already_done} already there), {self.failed} failed"]
        if usage is not None:
            tokens = usage.prompt_tokens + usage.completion_tokens
            parts += [
                f"{usage.completions_received}/{usage.completions_requested} completions in {usage.requests} "
                f"requests ({usage.retries} retried)",
                f"{tokens:,} tokens ({usage.prompt_tokens:,} prompt + {usage.completion_tokens:,} completion)",
            ]
        parts.append(f"{time.monotonic() - self.started:.1f}s")
        return f"{self.name}: " + "; ".join(parts)


async def run(
    units: Iterable[dict],
    total: int,
    work: Callable[[dict], Awaitable[list[dict]]],
    output: JsonlOutput,
    stats: JobStats,
    *,
    concurrency: int,
    unit: str = "rec",
) -> None:
    """`work` each unit (a record with an id) on `concurrency` coroutines and write what it returns as soon as
    it is done; the progress bar counts units as `unit`. A unit whose requests fail for good is counted, logged
    and left out, so a rerun retries it."""
    stats.already_done = len(output.done)
    iterator = iter(units)

    async def worker() -> None:
        for item in iterator:  # shared: each coroutine takes the next unit when it is free
            try:
                records = await work(item)
            except BackendError as error:
                stats.failed += 1
                logger.warning("%s failed: %s", item["id"], error)
            else:
                for record in records:
                    output.write(record)
                stats.written += len(records)
            bar.update()
            bar.set_postfix(failed=stats.failed, refresh=False)

    with (
        logging_redirect_tqdm(),  # log lines above the progress bar, not through it
        tqdm(total=total, desc=stats.name, unit=unit, dynamic_ncols=True) as bar,
    ):
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, total))):
                group.create_task(worker())
