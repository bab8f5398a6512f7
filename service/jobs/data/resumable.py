"""JSON Lines in and out, so that a job can stop at any point and a rerun finishes it.

Outputs are append-only and flushed per record: a crash loses at most the records in flight (and a
partial last line, which the rerun cuts off). Records are written as they finish, so with concurrency
their order differs from the input's.
"""

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Self

from service.jobs.inputs import InputError, read_jsonl

logger = logging.getLogger(__name__)


class Shard(NamedTuple):
    """Part `index` of `count` (0-based): a record belongs to the part its id hashes to, on every machine."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Self:
        """`i/n` with 0 <= i < n."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"{text!r} is not i/n (e.g. 0/4)") from None
        if not 0 <= index < count:
            raise ValueError(f"{text!r}: need 0 <= i < n (shards are numbered from 0)")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def __contains__(self, record_id: object) -> bool:
        digest = hashlib.sha1(str(record_id).encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


WHOLE = Shard(0, 1)


class JsonlOutput:
    """An output file opened for appending that knows the ids it already holds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = self._recover()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def _recover(self) -> set[str]:
        """Ids of the complete lines already there; a partial last line (a crash mid-write) is cut off."""
        if not self.path.exists():
            return set()
        done: set[str] = set()
        with open(self.path, "rb+") as file:
            end = 0
            for number, line in enumerate(file, 1):
                if not line.endswith(b"\n"):
                    logger.warning("%s: cutting off a partial last line (an interrupted write)", self.path)
                    file.truncate(end)
                    break
                end += len(line)
                if line.strip():
                    try:
                        done.add(json.loads(line)["id"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise InputError(f"{self.path}:{number}: not a record with an id; not resuming") from None
        return done

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.done.add(record["id"])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def pending(path: Path, shard: Shard, done: set[str]) -> Iterator[dict]:
    """Input records of this shard that are not in the output yet, each id once."""
    seen: set[str] = set()
    for record in read_jsonl(path):
        record_id = record.get("id")
        if record_id is None:
            raise InputError(f"{path}: a record has no id")
        if record_id in shard and record_id not in done and record_id not in seen:
            seen.add(record_id)
            yield record
