"""Every failure becomes JSON `{"error", "type", "request_id"}` with the right status, and is counted."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.api.auth import Forbidden, Unauthorized
from service.api.middleware import error_body
from service.engine import DeadlineExceeded, EngineStopped, Overloaded
from service.metrics import Metrics
from service.prm.checkpoint import CheckpointError
from service.prm.errors import DeviceOutOfMemory, InputTooLong, InvalidInput
from service.runtime import NotReady, ReloadInProgress
from service.upstream import UpstreamError, UpstreamUnavailable

RETRY_AFTER_SECONDS = "1"


class RequestTooLarge(InvalidInput):
    """More items, steps or characters than the configured limits (HTTP 413)."""


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready; its queued work was dropped."""


def error_response(
    request: Request, status: int, kind: str, message: str, retry: bool = False, headers: dict | None = None
) -> JSONResponse:
    headers = {**(headers or {}), **({"Retry-After": RETRY_AFTER_SECONDS} if retry else {})}
    return JSONResponse(error_body(request.scope, kind, message), status_code=status, headers=headers or None)


def _describe_validation(error: RequestValidationError) -> str:
    parts = []
    for detail in error.errors():
        if detail["type"] == "json_invalid":  # loc is ("body", offset): say so in words
            reason = detail.get("ctx", {}).get("error", "")
            parts.append(f"body: invalid JSON at character {detail['loc'][-1]}" + (f" ({reason})" if reason else ""))
            continue
        field = ""
        for part in detail["loc"][1:] if detail["loc"][:1] == ("body",) else detail["loc"]:
            field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
        parts.append(f"{field or 'body'}: {detail['msg']}")
    return "; ".join(parts)


def _not_json(request: Request) -> str | None:
    """Why the body was not read as JSON, if its content-type is the cause."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return "the request has no content-type header: send content-type: application/json"
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return None
    return f"content-type is {content_type!r}; the body must be JSON, sent as content-type: application/json"


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def handler(status: int, kind: str, retry: bool = False, headers: dict | None = None):
        async def handle(request: Request, error: Exception) -> JSONResponse:
            metrics.failures.labels(reason=kind).inc()
            return error_response(request, status, kind, str(error), retry, headers)

        return handle

    async def validation(request: Request, error: RequestValidationError) -> JSONResponse:
        if request.method == "POST" and (reason := _not_json(request)):
            metrics.failures.labels(reason="unsupported_media_type").inc()
            return error_response(request, 415, "unsupported_media_type", reason)
        metrics.failures.labels(reason="invalid_request").inc()
        return error_response(request, 422, "invalid_request", _describe_validation(error))

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400:  # FastAPI's answer to a body it cannot decode (e.g. invalid UTF-8)
            metrics.failures.labels(reason="invalid_request").inc()
            return error_response(request, 400, "invalid_request", f"body: {error.detail}")
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(request, error.status_code, kind, str(error.detail))

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(InputTooLong, handler(413, "input_too_long"))
    app.add_exception_handler(RequestTooLarge, handler(413, "too_large"))
    app.add_exception_handler(Unauthorized, handler(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"}))
    app.add_exception_handler(Forbidden, handler(403, "forbidden"))
    app.add_exception_handler(ReloadInProgress, handler(409, "reload_in_progress", retry=True))
    app.add_exception_handler(CheckpointError, handler(409, "reload_failed"))
    app.add_exception_handler(InvalidInput, handler(422, "invalid_request"))
    app.add_exception_handler(Overloaded, handler(429, "overloaded", retry=True))
    app.add_exception_handler(NotReady, handler(503, "not_ready", retry=True))
    app.add_exception_handler(EngineStopped, handler(503, "shutting_down", retry=True))
    app.add_exception_handler(UpstreamUnavailable, handler(503, "upstream_unavailable", retry=True))
    app.add_exception_handler(UpstreamError, handler(502, "upstream_error"))
    app.add_exception_handler(DeadlineExceeded, handler(504, "deadline_exceeded"))
    app.add_exception_handler(DeviceOutOfMemory, handler(507, "device_out_of_memory"))
    # nginx's "client closed request": nobody reads it, but logs and metrics show what happened
    app.add_exception_handler(ClientDisconnected, handler(499, "client_disconnected"))
    # Anything else is a bug: service.api.middleware.InternalErrors answers it with a 500.
