"""`prm annotate mc`: Monte Carlo step labels, as in Math-Shepherd and the paper's baseline.

For step t, k completions continue the assistant's own text `steps[:t+1]` (joined and followed by a blank
line, so the policy starts the next step). A completion reaches the gold answer when the answer extracted
from prefix + completion verifies; so for the last step, whose prefix may already hold the boxed answer, the
response's own answer counts unless the completion writes another. Step t is negative iff none of the k
does (the hard label; the counts are the soft one). Annotation stops at the first negative step: what
follows an error is not labelled. A grade that timed out counts as a miss.
"""

import asyncio
from pathlib import Path

from service.jobs.data.answers import Grader, extract_answer
from service.jobs.data.backends import Backend
from service.jobs.data.generate import policy_messages
from service.jobs.data.resumable import JsonlOutput, Shard, pending
from service.jobs.data.runner import JobStats, run


async def annotate_mc(
    responses_path: Path,
    output: JsonlOutput,
    backend: Backend,
    grader: Grader,
    *,
    k: int,
    system: str | None,
    shard: Shard,
    concurrency: int,
) -> JobStats:
    stats = JobStats("prm annotate mc")

    async def estimate(response: dict) -> list[dict]:
        messages = policy_messages(response["problem"], system)
        correct: list[int] = []
        for t in range(len(response["steps"])):
            prefix = "\n\n".join(response["steps"][: t + 1]) + "\n\n"
            completions = await backend.continue_assistant(messages, prefix, k)
            grades = await asyncio.gather(
                *(grader.grade(response["answer"], extract_answer(prefix + completion)) for completion in completions)
            )
            correct.append(sum(grade is True for grade in grades))
            if correct[-1] == 0:
                break
        first_error = len(correct) - 1 if correct and correct[-1] == 0 else -1
        return [{**response, "mc": {"k": k, "correct": correct, "first_error": first_error}}]

    total = sum(1 for _ in pending(responses_path, shard, output.done))
    await run(pending(responses_path, shard, output.done), total, estimate, output, stats, concurrency=concurrency)
    return stats
