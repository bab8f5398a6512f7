"""Any OpenAI-compatible server as a backend: vLLM, SGLang, `transformers serve`, a hosted API.

- `--base-url` ends in `/v1`, as in the OpenAI client convention (`http://localhost:8000/v1`).
- Answers (generate, judge) use `/v1/chat/completions`: the server applies the model's chat template.
- Continuations (annotate mc) use `/v1/completions` with a prompt rendered here by the model's own
  tokenizer, ending inside the assistant's turn. The chat route's `continue_final_message` extension would
  spare the tokenizer, but `transformers serve` rejects fields it does not know (422), while a text prompt
  works on vLLM, SGLang and transformers serve alike. The tokenizer is loaded from `--tokenizer` (default:
  the model name), so a Hub id needs the Hub or a local cache.
- `n` is asked for, and a server that returns fewer choices (transformers serve ignores `n`) is asked again
  for the rest: nothing here depends on knowing which server it is.
- 408/429/5xx answers, timeouts and connection errors are retried with exponential backoff and full jitter,
  honouring Retry-After; other errors fail the request at once.
"""

import asyncio
import logging
import random
from collections.abc import Callable

import httpx

from service.jobs.data.backends import BackendError, BackendUnavailable, Messages, Sampling, Usage, continuation_prompt

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0


class OpenAIBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        sampling: Sampling,
        *,
        api_key: str | None,
        tokenizer: str | None,
        concurrency: int,
        timeout: float,
        max_retries: int,
        backoff: float = 1.0,
    ):
        """`tokenizer`: name or path of the tokenizer that renders continuation prompts; None if the job asks
        for none. The defaults are the command line's (service.jobs.data.cli.Client)."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.sampling = sampling
        self.usage = Usage()
        self._tokenizer_name = tokenizer
        self._tokenizer = None
        self._max_retries = max_retries
        self._backoff = backoff
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout, pool=None),  # waiting for a free connection is our own queue, not a failure
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def start(self) -> None:
        url = f"{self.base_url}/models"
        try:
            response = await self._client.get("/models", timeout=30)
        except httpx.HTTPError as error:
            raise BackendUnavailable(
                f"cannot reach {url} ({type(error).__name__}: {error}). Is the server up? "
                "--base-url ends in /v1, e.g. http://localhost:8000/v1"
            ) from None
        if response.status_code in (401, 403):
            raise BackendUnavailable(f"{url} refused the request (HTTP {response.status_code}): check --api-key")
        if response.status_code != 200:
            raise BackendUnavailable(
                f"GET {url} answered HTTP {response.status_code}: is this an OpenAI-compatible server? "
                "--base-url ends in /v1, e.g. http://localhost:8000/v1"
            )
        try:
            served = [entry["id"] for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise BackendUnavailable(f"GET {url} did not return an OpenAI model list") from None
        if self.model not in served:
            raise BackendUnavailable(
                f"{self.base_url} does not serve a model named {self.model!r}; it serves: {', '.join(served) or 'none'}"
            )
        if self._tokenizer_name:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self._tokenizer_name)
            except (OSError, ValueError) as error:
                raise BackendUnavailable(
                    f"cannot load the tokenizer {self._tokenizer_name!r} that renders continuation prompts "
                    f"({error}); pass --tokenizer with a local path or Hub id"
                ) from None
            if self._tokenizer.chat_template is None:
                raise BackendUnavailable(f"the tokenizer {self._tokenizer_name!r} has no chat template")

    async def chat(self, messages: Messages, n: int) -> list[str]:
        return await self._sample(
            "/chat/completions", {"messages": messages}, n, lambda choice: choice["message"]["content"]
        )

    async def continue_assistant(self, messages: Messages, partial: str, n: int) -> list[str]:
        if self._tokenizer is None:
            raise RuntimeError("continuations need the tokenizer: construct the backend with tokenizer=...")
        prompt = continuation_prompt(self._tokenizer, messages, partial)
        return await self._sample("/completions", {"prompt": prompt}, n, lambda choice: choice["text"])

    async def close(self) -> None:
        await self._client.aclose()

    async def _sample(self, path: str, body: dict, n: int, text_of: Callable[[dict], str | None]) -> list[str]:
        """n choices, asking again for the rest while the server returns fewer than asked."""
        self.usage.completions_requested += n
        texts: list[str] = []
        while len(texts) < n:
            wanted = n - len(texts)
            answer = await self._post(
                path,
                {
                    "model": self.model,
                    **body,
                    "temperature": self.sampling.temperature,
                    "top_p": self.sampling.top_p,
                    "max_tokens": self.sampling.max_tokens,
                    **({"n": wanted} if wanted > 1 else {}),
                },
            )
            try:
                got = [text_of(choice) or "" for choice in answer["choices"][:wanted]]
            except (KeyError, TypeError):
                raise BackendError(f"POST {path}: unexpected answer {str(answer)[:300]}") from None
            if not got:
                raise BackendError(f"POST {path}: the answer has no choices")
            texts.extend(got)
            self.usage.completions_received += len(got)
            usage = answer.get("usage") or {}
            self.usage.prompt_tokens += usage.get("prompt_tokens") or 0
            self.usage.completion_tokens += usage.get("completion_tokens") or 0
        return texts

    async def _post(self, path: str, payload: dict) -> dict:
        attempt = 0
        while True:
            self.usage.requests += 1
            retry_after = 0.0
            try:
                response = await self._client.post(path, json=payload)
            except httpx.TransportError as error:  # connection errors and timeouts
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise BackendError(f"POST {path}: the answer is not JSON") from None
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRYABLE_STATUS:
                    raise BackendError(f"POST {path}: {problem}")
                retry_after = _retry_after(response)
            if attempt == self._max_retries:
                raise BackendError(f"POST {path} failed {attempt + 1} times; the last time with {problem}")
            attempt += 1
            self.usage.retries += 1
            delay = max(retry_after, random.uniform(0, min(MAX_BACKOFF_S, self._backoff * 2 ** (attempt - 1))))
            logger.warning("POST %s: %s; retrying in %.1fs", path, problem, delay)
            await asyncio.sleep(delay)


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (its HTTP-date form is ignored), at most MAX_BACKOFF_S."""
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(response.headers.get("retry-after", 0))))
    except ValueError:
        return 0.0
