"""Problems with gold answers, from our own JSONL or straight from the GSM8K and MATH500 test files."""

from pathlib import Path

from service.jobs.inputs import InputError, read_jsonl


def load_problems(path: Path) -> list[dict]:
    """`{"id", "problem", "answer"}` records; ids are stable across runs, so that resuming works.

    Each line may be ours (`id`, `problem`, `answer`), GSM8K's (`question`, `answer` ending in `#### N`;
    id `gsm8k-<line index>`) or MATH500's (`problem`, `answer`, `unique_id`).
    """
    problems = [_convert(record, index, path) for index, record in enumerate(read_jsonl(path))]
    ids = [problem["id"] for problem in problems]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: problem ids are not unique")
    return problems


def gsm8k_gold(solution: str) -> str:
    """GSM8K's final answer: what follows `####`, without thousands separators."""
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def _convert(record: dict, index: int, path: Path) -> dict:
    if "question" in record and "####" in str(record.get("answer", "")):
        problem_id = record.get("id", f"gsm8k-{index}")
        return {"id": str(problem_id), "problem": record["question"], "answer": gsm8k_gold(record["answer"])}
    if "problem" in record and "answer" in record:
        problem_id = record.get("id", record.get("unique_id"))
        if problem_id is None:
            raise InputError(f"{path}: record {index} has neither an id nor a unique_id")
        return {"id": str(problem_id), "problem": record["problem"], "answer": str(record["answer"])}
    raise InputError(
        f"{path}: record {index} is none of ours ({{id, problem, answer}}), GSM8K's ({{question, answer: ... #### N}}) "
        "or MATH500's ({problem, answer, unique_id})"
    )
