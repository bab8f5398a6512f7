"""Final answers: pull one out of a solution's text, and grade it against the gold answer with math-verify.

math-verify runs in worker processes: sympy can spend minutes (or forever, inside C code) on one
pathological expression, and a job over millions of completions must not hang on it. A grade that
exceeds its timeout is None, and the worker that was stuck on it is killed and replaced.
"""

import asyncio
import contextlib
import importlib
import json
import logging
import re
import select
import subprocess
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Self

logger = logging.getLogger(__name__)

GRADE_WORKERS = 2  # processes grading answers with math-verify
GRADE_TIMEOUT = 30.0  # seconds one grade may take; beyond, it is no match and its worker restarts

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+?)\s*(?:\.\s|\.?$|\n)", re.IGNORECASE | re.MULTILINE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` (or `\\fbox{...}`), nested braces included."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for position in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                return text[match.end() : position].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The solution's final answer: the last `\\boxed{}`, else "the answer is X", else `#### X`, else the
    last number; None when there is none."""
    answer = last_boxed(text)
    if answer is None:
        for pattern in (_ANSWER_IS, _HASHES):
            matches = pattern.findall(text)
            if matches:
                answer = matches[-1]
                break
    if answer is None:
        numbers = _NUMBER.findall(text)
        answer = numbers[-1].replace(",", "") if numbers else None
    if answer is None:
        return None
    answer = answer.strip().strip("$").strip().rstrip(".").strip()
    return answer or None


def is_equivalent(gold: str, prediction: str) -> bool:
    """math-verify's judgement, gold first: both are read as the content of a `\\boxed{}`."""
    from math_verify import parse, verify

    return verify(_parse_gold(gold), parse(f"\\boxed{{{prediction}}}"))


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(f"\\boxed{{{gold}}}")


class _Worker:
    """One grading process (`python -m service.jobs.data.answers`) fed JSON lines over its stdin.

    A plain subprocess rather than multiprocessing's spawn, which would re-import the parent's main module
    (the whole `prm` command line) in every worker.
    """

    def __init__(self, function: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, function], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def grade(self, gold: str, prediction: str, timeout: float) -> bool:
        """Raises TimeoutError, or EOFError/OSError if the process died."""
        self.process.stdin.write(json.dumps([gold, prediction]) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.process.stdout.readline()
        if not line:
            raise EOFError
        return json.loads(line)

    def stop(self) -> None:
        """Close its input (it exits at the end of it); kill it if it does not."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.kill()  # nothing to kill if it exited; closes the pipes either way

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def _serve(function: Callable[[str, str], bool]) -> None:
    """The worker's loop: a `[gold, prediction]` line in, `true` or `false` out, until the input ends."""
    answers, sys.stdout = sys.stdout, sys.stderr  # stray prints must not corrupt the answers
    for line in sys.stdin:
        try:
            result = bool(function(*json.loads(line)))
        except Exception:  # math-verify raises on some inputs; an unreadable answer is not a right one
            result = False
        answers.write(json.dumps(result) + "\n")
        answers.flush()


class Grader:
    """Grades answers on `workers` processes, started on first use; use it as an async context manager."""

    def __init__(
        self, workers: int = GRADE_WORKERS, timeout: float = GRADE_TIMEOUT, function: str = f"{__name__}:is_equivalent"
    ):
        """`function`: `module:name` of the (gold, prediction) -> bool that the workers run."""
        self.timeout = timeout
        self.function = function
        self.timeouts = 0
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()
        for _ in range(workers):
            self._idle.put_nowait(None)
        self._all: list[_Worker] = []

    async def grade(self, gold: str, prediction: str | None) -> bool | None:
        """True or False; False without an answer; None when grading timed out or crashed."""
        if prediction is None:
            return False
        worker = await self._idle.get()
        try:
            if worker is None:
                worker = await asyncio.to_thread(self._start)
            try:
                return await asyncio.to_thread(worker.grade, gold, prediction, self.timeout)
            except (TimeoutError, EOFError, OSError):
                self.timeouts += 1
                logger.warning(
                    "grading %r against %r failed or took over %gs: graded None, worker replaced",
                    prediction,
                    gold,
                    self.timeout,
                )
                await asyncio.to_thread(worker.kill)
                self._all.remove(worker)
                worker = None
                return None
        finally:
            self._idle.put_nowait(worker)

    def _start(self) -> _Worker:
        worker = _Worker(self.function)
        self._all.append(worker)
        return worker

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in self._all))
        self._all.clear()


if __name__ == "__main__":
    module, name = sys.argv[1].split(":")
    _serve(getattr(importlib.import_module(module), name))
