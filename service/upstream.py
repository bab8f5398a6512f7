"""A backend whose forward runs in a vLLM server: token ids to its `/pooling`, step scores back.

For PRMs that one device cannot hold (Qwen2.5-Math-PRM-72B): vLLM brings tensor, pipeline and data
parallelism, and multi-node through Ray; this service keeps formatting, validation, limits, auth,
batching, the HTTP contract and the metrics. Its health follows the upstream: `up` turns False as soon
as a request or a health poll fails, and scoring then answers 503 at once until a poll succeeds again.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from service.metrics import Metrics
from service.prm.formatting import STEP_SEPARATOR, EncodedItem
from service.prm.scorer import Pending, ScoredBatch

CONNECT_TIMEOUT_SECONDS = 2.0  # an unreachable upstream must answer 503 within seconds, never hang


class UpstreamUnavailable(RuntimeError):
    """The vLLM server cannot be reached or is not ready (HTTP 503, retry later)."""


class UpstreamError(RuntimeError):
    """The vLLM server answered, but not with step scores for what was sent (HTTP 502)."""


class VLLMScorer:
    """The `Scorer` protocol over a vLLM server's `/pooling` (task `token_classify`)."""

    def __init__(self, url: str, model: str, separator_id: int, metrics: Metrics, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.model = model
        self.separator_id = separator_id
        self.metrics = metrics
        self.up = False  # until it answers
        self.overlaps = True
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS))
        # Two batches in flight, as the packed scorer overlaps one batch's preparation with another's compute.
        self._requests = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prm-vllm")

    def served_models(self) -> list[str]:
        """The model names the upstream serves (its /v1/models)."""
        try:
            response = self._http.get(f"{self.url}/v1/models", timeout=10)
            response.raise_for_status()
            served = [entry["id"] for entry in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError) as error:
            self._set_up(False)
            raise UpstreamUnavailable(f"vLLM at {self.url} did not list its models: {error}") from error
        self._set_up(True)
        return served

    def poll(self) -> bool:
        """Ask the upstream's /health; `up` follows the answer."""
        try:
            self._set_up(self._http.get(f"{self.url}/health", timeout=CONNECT_TIMEOUT_SECONDS).status_code == 200)
        except httpx.HTTPError:
            self._set_up(False)
        return self.up

    def launch(self, items: list[EncodedItem]) -> Pending:
        if not self.up:
            raise UpstreamUnavailable(f"vLLM at {self.url} is unreachable")
        return self._requests.submit(self._score, items).result

    def _score(self, items: list[EncodedItem]) -> ScoredBatch:
        body = {"model": self.model, "input": [item.input_ids for item in items], "task": "token_classify"}
        started = time.perf_counter()
        try:
            response = self._http.post(f"{self.url}/pooling", json=body)
        except httpx.TransportError as error:
            self._count("unreachable", started)
            self._set_up(False)
            raise UpstreamUnavailable(f"vLLM at {self.url} is unreachable: {type(error).__name__}") from error
        if response.status_code != 200:
            self._count(str(response.status_code), started)
            kind = UpstreamUnavailable if response.status_code in (502, 503, 504) else UpstreamError
            raise kind(f"vLLM at {self.url} answered {response.status_code}: {response.text[:300]}")
        self._count("success", started)
        rows = sorted(response.json()["data"], key=lambda row: row["index"])
        scores = []
        for item, row in zip(items, rows, strict=True):
            if len(row["data"]) != len(item.separator_positions):
                raise UpstreamError(
                    f"vLLM scored {len(row['data'])} positions where the input has {len(item.separator_positions)} "
                    f"{STEP_SEPARATOR} separators: start it with --pooler-config "
                    f"'{{\"step_tag_id\": {self.separator_id}}}', this tokenizer's {STEP_SEPARATOR} id"
                )
            scores.append([probabilities[1] for probabilities in row["data"]])
        return ScoredBatch(scores, sum(len(item) for item in items))

    def _count(self, outcome: str, started: float) -> None:
        self.metrics.upstream_requests.labels(outcome=outcome).inc()
        self.metrics.upstream_duration.observe(time.perf_counter() - started)

    def _set_up(self, up: bool) -> None:
        self.up = up
        self.metrics.upstream_up.set(1 if up else 0)

    def close(self) -> None:
        self._requests.shutdown(wait=False)
        self._http.close()
