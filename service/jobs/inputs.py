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
    return list(load_hub_dataset(str(source), split))


def load_hub_dataset(source: str, split: str | None = None):
    """The Hub dataset `source` (one split, or all as a dict), or an InputError in one line: a path that is
    not there, an id that is not Org/Name, or a dataset that cannot be reached (offline, unknown id)."""
    path = Path(source)
    if path.exists():
        raise InputError(f"{source}: not a file")
    if path.suffix in (".json", ".jsonl"):
        raise InputError(f"{source}: no such file")
    if source.count("/") != 1:
        raise InputError(f"{source} is neither a JSON/JSONL file nor a Hub dataset id like Org/Name")
    from datasets import load_dataset

    try:
        return load_dataset(source, split=split)
    except Exception as error:  # datasets raises many kinds (ConnectionError, DatasetNotFoundError, ...)
        raise InputError(f"{source}: no such file, and the Hub dataset could not be loaded ({error})") from None
