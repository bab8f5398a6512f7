"""Every failure becomes JSON `{"error", "type"}` with the right status, and is counted."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.api.auth import Forbidden, Unauthorized
from service.engine import DeadlineExceeded, EngineStopped, Overloaded
from service.metrics import Metrics
from service.prm.checkpoint import CheckpointError
from service.prm.errors import DeviceOutOfMemory, InputTooLong, InvalidInput
from service.runtime import NotReady, ReloadInProgress

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"


class RequestTooLarge(InvalidInput):
    """More items, steps or characters than the configured limits (HTTP 413)."""


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready; its queued work was dropped."""


def error_response(
    request: Request, status: int, kind: str, message: str, retry: bool = False, headers: dict | None = None
) -> JSONResponse:
    request.state.error_type = kind
    headers = {**(headers or {}), **({"Retry-After": RETRY_AFTER_SECONDS} if retry else {})}
    return JSONResponse({"error": message, "type": kind}, status_code=status, headers=headers or None)


def _describe_validation(error: RequestValidationError) -> str:
    parts = []
    for detail in error.errors():
        field = ""
        for part in detail["loc"][1:] if detail["loc"][:1] == ("body",) else detail["loc"]:
            field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
        parts.append(f"{field or 'body'}: {detail['msg']}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def handler(status: int, kind: str, retry: bool = False, headers: dict | None = None):
        async def handle(request: Request, error: Exception) -> JSONResponse:
            metrics.failures.labels(reason=kind).inc()
            return error_response(request, status, kind, str(error), retry, headers)

        return handle

    async def validation(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.failures.labels(reason="invalid_request").inc()
        return error_response(request, 422, "invalid_request", _describe_validation(error))

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400:  # FastAPI's answer to a body it cannot decode (e.g. invalid UTF-8)
            metrics.failures.labels(reason="invalid_request").inc()
            return error_response(request, 400, "invalid_request", f"body: {error.detail}")
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(request, error.status_code, kind, str(error.detail))

    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        metrics.failures.labels(reason="internal_error").inc()
        return error_response(request, 500, "internal_error", f"internal error: {type(error).__name__}")

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
    app.add_exception_handler(DeadlineExceeded, handler(504, "deadline_exceeded"))
    app.add_exception_handler(DeviceOutOfMemory, handler(507, "device_out_of_memory"))
    # nginx's "client closed request": nobody reads it, but logs and metrics show what happened
    app.add_exception_handler(ClientDisconnected, handler(499, "client_disconnected"))
    app.add_exception_handler(Exception, bug)
