"""Reading the offline jobs' inputs: JSON arrays or JSON Lines files, or a Hugging Face dataset id."""

import json
from pathlib import Path


def read_records(source: str | Path, split: str = "train") -> list[dict]:
    """Records from a local `.json` (array) / `.jsonl` file, else from the Hub dataset `source` (its `split`)."""
    path = Path(source)
    if path.is_file():
        text = path.read_text()
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.exists() or source.count("/") != 1:
        raise FileNotFoundError(f"{source} is neither a JSON/JSONL file nor a Hub dataset id like Org/Name")
    from datasets import load_dataset

    return list(load_dataset(str(source), split=split))
