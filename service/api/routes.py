"""HTTP endpoints: parse, hand text to the runtime, shape the answer. No tensors here."""

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.auth import require_admin_key, require_api_key, require_metrics_key
from service.api.errors import ClientDisconnected, RequestTooLarge, error_response
from service.api.schemas import (
    ErrorBody,
    ModelCard,
    ModelList,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ScoreBatchResponse,
    ScoreStepsRequest,
    ScoreStepsResponse,
    StepScores,
    Usage,
)
from service.prm.aggregation import aggregate, rank
from service.prm.errors import InvalidInput
from service.prm.formatting import ScoringInput, validate_context
from service.runtime import Encoder, Runtime, Scored

ERRORS = {status: {"model": ErrorBody} for status in (401, 413, 415, 422, 429, 500, 502, 503, 504, 507)}
TIMEOUT_HEADER = "X-Request-Timeout"
# A body up to this size is tokenized on the event loop (at about 0.5 µs a character, a few ms at most); a
# larger one in a worker thread. On a small machine the hop to a thread and back costs more than the work:
# each of its two wake-ups preempts one of the engine's compute threads, which stalls the other.
INLINE_ENCODE_BYTES = 16384


router = APIRouter()
SCORING = [Depends(require_api_key)]


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _timeout(request: Request) -> float | None:
    """Seconds the request's work may wait to start: the header if given, else --request-timeout (0: none)."""
    header = request.headers.get(TIMEOUT_HEADER)
    if header is None:
        return _runtime(request).config.request_timeout or None
    try:
        seconds = float(header)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds < float("inf")):
        raise InvalidInput(TIMEOUT_HEADER, f"must be a positive number of seconds, not {header!r}")
    return seconds


def check_count(runtime: Runtime, field: str, count: int) -> None:
    """At most --max-items-per-request items, candidates or inputs in one request."""
    limit = runtime.config.max_items_per_request
    if count > limit:
        raise RequestTooLarge(field, f"has {count} entries; at most {limit} are accepted per request")


def check_problem(runtime: Runtime, field: str, problem: str) -> None:
    """Size limit that keeps a pathological problem away from the tokenizer."""
    limit = runtime.config.max_problem_chars
    if len(problem) > limit:
        raise RequestTooLarge(field, f"has {len(problem)} characters; the limit is {limit}")


def check_steps(runtime: Runtime, field: str, steps: list[str]) -> None:
    """Size limits that keep pathological solutions away from the tokenizer and the model."""
    config = runtime.config
    if len(steps) > config.max_steps_per_item:
        raise RequestTooLarge(field, f"has {len(steps)} steps; the limit is {config.max_steps_per_item}")
    for index, step in enumerate(steps):
        if len(step) > config.max_step_chars:
            raise RequestTooLarge(
                f"{field}[{index}]", f"has {len(step)} characters; the limit is {config.max_step_chars}"
            )


def conversations(items: list[tuple[str, ScoringInput]], context_checked: bool = False) -> Encoder:
    """`(field, item)` pairs as the model card's conversations; `field` names the item in error messages.

    `context_checked`: every item shares one problem and system prompt, already checked by the route."""
    return lambda prm: [prm.formatter.encode(item, field, context_checked) for field, item in items]


async def score_request(request: Request, encode: Encoder) -> Scored:
    """Score, dropping the queued work if the client goes away first."""
    declared = request.headers.get("content-length", "")
    inline = declared.isdigit() and int(declared) <= INLINE_ENCODE_BYTES
    scoring = asyncio.ensure_future(_runtime(request).score(encode, _timeout(request), inline))
    watching = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({scoring, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if scoring.done():
        scored = scoring.result()
        request.state.tokens = scored.tokens  # for the access log
        return scored
    scoring.cancel()
    raise ClientDisconnected("the client disconnected before its scores were ready")


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away. The body is read, so the server's next message is
    `http.disconnect`: awaited, not polled, it costs nothing while the request waits for its scores."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post("/score_steps", responses=ERRORS, dependencies=SCORING)
async def score_steps(body: ScoreStepsRequest, request: Request) -> ScoreStepsResponse | ScoreBatchResponse:
    """Score every step of one solution, or of a batch of solutions (`items`)."""
    runtime = _runtime(request)
    items = body.as_items()
    check_count(runtime, "items", len(items))
    names = [f"items[{index}]" for index in range(len(items))] if body.items is not None else [""]
    inputs = []
    for name, item in zip(names, items, strict=True):
        where = f"{name}." if name else ""
        check_problem(runtime, f"{where}problem", item.problem)
        check_steps(runtime, f"{where}steps", item.steps)
        inputs.append((name, item))
    scored = await score_request(request, conversations(inputs))
    usage = Usage(tokens=scored.tokens)
    if body.items is None:
        return ScoreStepsResponse(
            step_scores=scored.step_scores[0], model=scored.model, model_version=scored.model_version, usage=usage
        )
    return ScoreBatchResponse(
        results=[StepScores(step_scores=scores) for scores in scored.step_scores],
        model=scored.model,
        model_version=scored.model_version,
        usage=usage,
    )


@router.post("/rerank", responses=ERRORS, response_model_exclude_none=True, dependencies=SCORING)
async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
    """Rank candidate solutions of one problem by their aggregated step scores, best first."""
    runtime = _runtime(request)
    check_count(runtime, "candidates", len(body.candidates))
    check_problem(runtime, "problem", body.problem)
    validate_context(body.problem, body.system)  # once for every candidate
    items = []
    for index, candidate in enumerate(body.candidates):
        check_steps(runtime, f"candidates[{index}].steps", candidate.steps)
        items.append((f"candidates[{index}]", ScoringInput(body.problem, candidate.steps, body.system)))
    scored = await score_request(request, conversations(items, context_checked=True))
    solution_scores = [aggregate(scores, body.aggregation) for scores in scored.step_scores]
    order = rank(solution_scores)[: body.top_n]
    results = [
        RerankResult(
            index=index,
            score=solution_scores[index],
            step_scores=scored.step_scores[index] if body.return_step_scores else None,
        )
        for index in order
    ]
    return RerankResponse(
        results=results, model=scored.model, model_version=scored.model_version, usage=Usage(tokens=scored.tokens)
    )


@router.post("/admin/reload", dependencies=[Depends(require_admin_key)], responses=ERRORS)
async def reload(request: Request) -> dict:
    """Load the model's source again beside the serving one and swap it in when warmed up.

    Requests in flight finish on the old model; every response names the version that scored it.
    """
    previous, current = await asyncio.to_thread(_runtime(request).reload)
    return {"previous_version": previous, "model_version": current, "model": _runtime(request).describe()["id"]}


@router.get("/health")
async def health() -> dict:
    """200 while the process lives."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"model": ErrorBody}})
async def ready(request: Request) -> Response:
    """200 once a model is loaded and warmed up; 503 before (or if loading failed)."""
    runtime = _runtime(request)
    if not runtime.ready:
        message = runtime.not_ready_reason
        return error_response(request, 503, "not_ready", message, retry=True)
    prm = runtime.serving.prm
    return JSONResponse({"status": "ready", "model": prm.name, "model_version": prm.version})


@router.get("/v1/models", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def models(request: Request) -> ModelList:
    """The loaded model: name, version, family, dtype, device, maximum length."""
    return ModelList(data=[ModelCard(**_runtime(request).describe())])


@router.get("/metrics", dependencies=[Depends(require_metrics_key)], response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
