"""Python clients for prm-service, sync and async, on httpx.

Both retry 429 and 503 answers (overload, loading, draining), waiting what the
server's `Retry-After` asks, up to `max_retries` times; other errors raise `PRMError`.

    from service.client import PRMClient
    with PRMClient("http://127.0.0.1:8000", api_key="...") as prm:  # api_key only if the server has keys
        prm.score_steps("What is 2+3*4?", ["3*4 = 12", "2+12 = 14"])
"""

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx

RETRY_STATUSES = (429, 503)
Candidate = Sequence[str] | str


class PRMError(RuntimeError):
    """The service answered with an error; `status` and `type` come from its JSON body."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(f"{status} {kind}: {message}")
        self.status = status
        self.type = kind


def _item(problem: str, steps: Sequence[str], system: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"problem": problem, "steps": list(steps)}
    if system is not None:
        item["system"] = system
    return item


def _rerank_body(problem, candidates, aggregation, top_n, return_step_scores, system) -> dict[str, Any]:
    body: dict[str, Any] = {
        "problem": problem,
        "candidates": [c if isinstance(c, str) else {"steps": list(c)} for c in candidates],
        "aggregation": aggregation,
        "return_step_scores": return_step_scores,
    }
    if top_n is not None:
        body["top_n"] = top_n
    if system is not None:
        body["system"] = system
    return body


def _retry_delay(response: httpx.Response, attempt: int, backoff: float) -> float:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return backoff * 2**attempt


def _result(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        return response.json()
    try:
        body = response.json()
        raise PRMError(response.status_code, body["type"], body["error"])
    except (ValueError, KeyError, TypeError):
        raise PRMError(response.status_code, "http_error", response.text) from None


class _Calls:
    """Request bodies, result shapes and settings shared by both clients; `_post` does the I/O.

    `base_url`, `api_key` (sent as a Bearer token), `timeout` and extra httpx arguments configure
    the underlying httpx client; `max_retries` and `backoff` the retries of 429/503.
    """

    http_class: type

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.25,
        **httpx_args,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = self.http_class(base_url=base_url, timeout=timeout, headers=headers, **httpx_args)
        self.max_retries = max_retries
        self.backoff = backoff

    def score_steps(self, problem: str, steps: Sequence[str], system: str | None = None):
        """Step scores of one solution."""
        return self._then(self._post("/score_steps", _item(problem, steps, system)), lambda r: r["step_scores"])

    def score_batch(self, items: Sequence[dict[str, Any]]):
        """Step scores of many solutions (`{"problem", "steps", "system"?}` each), in order."""
        return self._then(
            self._post("/score_steps", {"items": list(items)}), lambda r: [x["step_scores"] for x in r["results"]]
        )

    def rerank(
        self,
        problem: str,
        candidates: Sequence[Candidate],
        aggregation: str = "product",
        top_n: int | None = None,
        return_step_scores: bool = False,
        system: str | None = None,
    ):
        """Candidates ranked best first: `[{"index", "score", "step_scores"?}, ...]`."""
        body = _rerank_body(problem, candidates, aggregation, top_n, return_step_scores, system)
        return self._then(self._post("/rerank", body), lambda r: r["results"])


class PRMClient(_Calls):
    http_class = httpx.Client

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        attempt = 0
        while True:
            response = self._http.post(path, json=body)
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                return _result(response)
            time.sleep(_retry_delay(response, attempt, self.backoff))
            attempt += 1

    @staticmethod
    def _then(result, pick):
        return pick(result)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "PRMClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncPRMClient(_Calls):
    http_class = httpx.AsyncClient

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        attempt = 0
        while True:
            response = await self._http.post(path, json=body)
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                return _result(response)
            await asyncio.sleep(_retry_delay(response, attempt, self.backoff))
            attempt += 1

    @staticmethod
    async def _then(result, pick):
        return pick(await result)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncPRMClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
