"""`prm generate`: n sampled solutions per problem from the policy, split into steps and graded.

A response's id is `<problem id>/<sample index>`, so a rerun asks only for the samples still missing.
"""

import asyncio
from pathlib import Path

from service.jobs.data.answers import Grader, extract_answer
from service.jobs.data.backends import Backend, Messages
from service.jobs.data.problems import load_problems
from service.jobs.data.resumable import JsonlOutput, Shard
from service.jobs.data.runner import JobStats, run
from service.prm.formatting import split_steps


def policy_messages(problem: str, system: str | None) -> Messages:
    """The conversation the policy answers (and `annotate mc` continues)."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": problem}]


async def generate(
    problems_path: Path,
    output: JsonlOutput,
    backend: Backend,
    grader: Grader,
    *,
    n: int,
    system: str | None,
    shard: Shard,
    concurrency: int,
) -> JobStats:
    stats = JobStats("prm generate")

    def missing(problem: dict) -> list[int]:
        return [index for index in range(n) if f"{problem['id']}/{index}" not in output.done]

    problems = [problem for problem in load_problems(problems_path) if problem["id"] in shard and missing(problem)]

    async def sample(problem: dict) -> list[dict]:
        indices = missing(problem)
        texts = await backend.chat(policy_messages(problem["problem"], system), len(indices))
        answers = [extract_answer(text) for text in texts]
        grades = await asyncio.gather(*(grader.grade(problem["answer"], answer) for answer in answers))
        return [
            {
                "id": f"{problem['id']}/{index}",
                "problem_id": problem["id"],
                "problem": problem["problem"],
                "answer": problem["answer"],
                "steps": split_steps(text),
                "final_answer": answer,
                "correct": grade,
                "policy": backend.model,
            }
            for index, text, answer, grade in zip(indices, texts, answers, grades, strict=True)
        ]

    await run(problems, len(problems), sample, output, stats, concurrency=concurrency, unit="problem")
    return stats
