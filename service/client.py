"""Python clients for prm-service, sync and async, on httpx, that ride out restarts and overload.

Scoring is idempotent, so a call is retried whenever its answer may come on a later try: a refused,
reset or timed-out connection, a broken response, and 408, 429, 502, 503 and 504. Each wait honours
the server's `Retry-After`, else backs off exponentially with full jitter (capped at `max_backoff`),
until the call's `retry_timeout` has passed; then `PRMError` names the last cause. Any other 4xx
raises at once with the server's error type and message. Each retry is logged at WARNING.

Several servers (a list, or one comma-separated string as OpenRLHF's flag takes) share the calls in
turn; one that fails is skipped until its backoff has passed, so the others take its load.

    from service.client import PRMClient
    with PRMClient("http://127.0.0.1:8000", api_key="...") as prm:  # api_key only if the server has keys
        prm.score_steps("What is 2+3*4?", ["3*4 = 12", "2+12 = 14"])
"""

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
# Transport failures after which the same request may succeed: not a bad URL or an unsupported scheme.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
Candidate = Sequence[str] | str


class PRMError(RuntimeError):
    """A call failed: `status` and `type` come from the server's JSON body, or are None and
    "unreachable" when no answer came before the retry deadline (the cause is `__cause__`)."""

    def __init__(self, status: int | None, kind: str, message: str):
        super().__init__(f"{status or 'no answer'} {kind}: {message}")
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
        "candidates": [c if isinstance(c, str) else list(c) for c in candidates],
        "aggregation": aggregation,
        "return_step_scores": return_step_scores,
    }
    if top_n is not None:
        body["top_n"] = top_n
    if system is not None:
        body["system"] = system
    return body


def _result(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        return response.json()
    try:
        body = response.json()
        raise PRMError(response.status_code, body["type"], body["error"])
    except (ValueError, KeyError, TypeError):
        raise PRMError(response.status_code, "http_error", response.text) from None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


class _Servers:
    """The base URLs, taken in turn; one that failed is skipped until its backoff has passed."""

    def __init__(self, base_urls: str | Sequence[str], backoff: float, max_backoff: float):
        urls = base_urls.split(",") if isinstance(base_urls, str) else list(base_urls)
        self.urls = [url.strip().rstrip("/") for url in urls if url.strip()]
        if not self.urls:
            raise ValueError("base_url names no server")
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._next = 0
        self._failures = dict.fromkeys(self.urls, 0)
        self._down_until = dict.fromkeys(self.urls, 0.0)

    def pick(self) -> tuple[str, float]:
        """The next server that is up, else the one back first, with the seconds until it is."""
        now = time.monotonic()
        for offset in range(len(self.urls)):
            url = self.urls[(self._next + offset) % len(self.urls)]
            if self._down_until[url] <= now:
                self._next = (self._next + offset + 1) % len(self.urls)
                return url, 0.0
        url = min(self.urls, key=self._down_until.get)
        return url, self._down_until[url] - now

    def failed(self, url: str, retry_after: float | None) -> None:
        """Mark `url` down for Retry-After, else for a jittered exponential backoff."""
        self._failures[url] += 1
        ceiling = min(self.max_backoff, self.backoff * 2 ** (self._failures[url] - 1))
        wait = retry_after if retry_after is not None else random.uniform(0, ceiling)
        self._down_until[url] = time.monotonic() + wait

    def succeeded(self, url: str) -> None:
        self._failures[url] = 0
        self._down_until[url] = 0.0


class _Attempts:
    """One call's retry state: which server next, how long to wait, and when to give up."""

    def __init__(self, servers: _Servers, path: str, retry_timeout: float, max_retries: int | None):
        self.servers = servers
        self.path = path
        self.deadline = time.monotonic() + retry_timeout
        self.max_retries = max_retries
        self.retries = 0

    def next(self) -> tuple[str, float]:
        """(server to post to, seconds to sleep first): never past the deadline."""
        server, wait = self.servers.pick()
        return server, min(wait, max(0.0, self.deadline - time.monotonic()))

    def answered(self, server: str, response: httpx.Response) -> bool:
        """True when this answer is final (a success, or an error that no retry can change)."""
        if response.status_code not in RETRY_STATUSES:
            self.servers.succeeded(server)
            return True
        if self._give_up():
            return True
        self.servers.failed(server, _retry_after(response))
        self._log(server, f"{response.status_code} {response.reason_phrase}")
        return False

    def failed(self, server: str, error: Exception) -> None:
        """A transport error: raise if it is not worth retrying or the time is up, else schedule a retry."""
        cause = f"{type(error).__name__}: {error}"
        where = f"POST {server}{self.path}"
        if not isinstance(error, RETRY_ERRORS):
            raise PRMError(None, "unreachable", f"{where} failed: {cause}") from error
        if self._give_up():
            tries = self.retries + 1
            raise PRMError(None, "unreachable", f"{where} gave up after {tries} attempts: {cause}") from error
        self.servers.failed(server, None)
        self._log(server, cause)

    def _give_up(self) -> bool:
        out_of_time = time.monotonic() >= self.deadline
        return out_of_time or (self.max_retries is not None and self.retries >= self.max_retries)

    def _log(self, server: str, cause: str) -> None:
        self.retries += 1
        log.warning("POST %s%s: %s; retry %d", server, self.path, cause, self.retries)


class _Calls:
    """Request bodies, result shapes and settings shared by both clients; `_post` does the I/O.

    `base_url` is one URL, several separated by commas, or a list. `api_key` is sent as a Bearer token;
    `timeout` bounds each attempt, `retry_timeout` each call with its retries (`max_retries`, if set,
    also bounds their count); `backoff` and `max_backoff` shape the waits. Extra keyword arguments go
    to the httpx client (e.g. `headers={"X-Request-Timeout": "5"}` for a server-side deadline).
    """

    http_class: type

    def __init__(
        self,
        base_url: str | Sequence[str],
        api_key: str | None = None,
        timeout: float = 60.0,
        retry_timeout: float = 120.0,
        max_retries: int | None = None,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        **httpx_args,
    ):
        headers = {**httpx_args.pop("headers", {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self._http = self.http_class(timeout=timeout, headers=headers, **httpx_args)
        self._servers = _Servers(base_url, backoff, max_backoff)
        self.retry_timeout = retry_timeout
        self.max_retries = max_retries

    def _attempts(self, path: str) -> _Attempts:
        return _Attempts(self._servers, path, self.retry_timeout, self.max_retries)

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
        attempts = self._attempts(path)
        while True:
            server, wait = attempts.next()
            time.sleep(wait)
            try:
                response = self._http.post(server + path, json=body)
            except httpx.HTTPError as error:
                attempts.failed(server, error)
                continue
            if attempts.answered(server, response):
                return _result(response)

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
        attempts = self._attempts(path)
        while True:
            server, wait = attempts.next()
            await asyncio.sleep(wait)
            try:
                response = await self._http.post(server + path, json=body)
            except httpx.HTTPError as error:
                attempts.failed(server, error)
                continue
            if attempts.answered(server, response):
                return _result(response)

    @staticmethod
    async def _then(result, pick):
        return pick(await result)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncPRMClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
