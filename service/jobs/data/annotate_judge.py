"""`prm annotate judge`: an LLM critic names the earliest wrong paragraph (ProcessBench's protocol).

The judge sees the problem and the steps tagged `<paragraph_i>`, and ends with the 0-based index of the
first wrong one in `\\boxed{}`, or `\\boxed{-1}`. Only the last `\\boxed{}` counts; if it is not an
integer, or not -1 or a paragraph's index, the verdict is null: the judge's answer is never guessed.
"""

import re
from pathlib import Path

from service.jobs.data.answers import last_boxed
from service.jobs.data.backends import Backend
from service.jobs.data.resumable import JsonlOutput, Shard, pending
from service.jobs.data.runner import JobStats, run

JUDGE_PROMPT = """\
Below is a math problem and a proposed solution, split into paragraphs numbered from 0.

Problem:
{problem}

Solution:
{paragraphs}

Check the paragraphs one at a time, in order. For each one, verify its calculations, its algebra and its \
reasoning, and whether it follows from the problem and from the paragraphs before it. Stop at the first \
paragraph that contains a mistake.

When you are done, give the index of that paragraph inside \\boxed{{}}, e.g. \\boxed{{2}}. If every paragraph \
is correct, give \\boxed{{-1}}."""

_INTEGER = re.compile(r"-?\d+")


def judge_prompt(problem: str, steps: list[str]) -> str:
    paragraphs = "\n\n".join(f"<paragraph_{i}>\n{step}\n</paragraph_{i}>" for i, step in enumerate(steps))
    return JUDGE_PROMPT.format(problem=problem, paragraphs=paragraphs)


def parse_verdict(critique: str, num_steps: int) -> int | None:
    """The index in the critique's last `\\boxed{}`: -1, or that of a paragraph; None for anything else."""
    boxed = last_boxed(critique)
    if boxed is None or not _INTEGER.fullmatch(boxed):
        return None
    index = int(boxed)
    return index if -1 <= index < num_steps else None


async def annotate_judge(
    responses_path: Path, output: JsonlOutput, backend: Backend, *, shard: Shard, concurrency: int
) -> JobStats:
    stats = JobStats("prm annotate judge")

    async def judge(response: dict) -> list[dict]:
        critique = ""
        if response["steps"]:
            prompt = judge_prompt(response["problem"], response["steps"])
            [critique] = await backend.chat([{"role": "user", "content": prompt}], 1)
        verdict = parse_verdict(critique, len(response["steps"]))
        return [{**response, "judge": {"first_error": verdict, "model": backend.model, "critique": critique}}]

    total = sum(1 for _ in pending(responses_path, shard, output.done))
    await run(pending(responses_path, shard, output.done), total, judge, output, stats, concurrency=concurrency)
    return stats
