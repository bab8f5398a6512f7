"""Reading the offline jobs' inputs: JSON Lines, JSON arrays, or a Hugging Face dataset id."""

import json
from collections.abc import Iterator
from pathlib import Path


class InputError(ValueError):
    """An input file that a job cannot read: the job stops before it starts."""


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a JSON Lines file, one at a time; blank lines are skipped."""
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not a JSON object ({error})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number}: not a JSON object")
            yield record


def read_records(source: str | Path, split: str = "train") -> list[dict]:
    """Records from a local `.json` (array) or JSON Lines file, else from the Hub dataset `source` (its `split`)."""
    path = Path(source)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            records = json.loads(text)
            if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
                raise InputError(f"{path}: not a JSON array of objects")
            return records
        return list(read_jsonl(path))
    if path.exists() or str(source).count("/") != 1:
        raise InputError(f"{source} is neither a JSON/JSONL file nor a Hub dataset id like Org/Name")
    from datasets import load_dataset

    return list(load_dataset(str(source), split=split))
