"""ASGI middleware around the routes, outermost first: request log, internal errors, body limit.

- `RequestLog` gives every request an id (the client's `X-Request-ID`, else a new one), echoes it,
  counts and times the request by route template and writes one access-log line.
- `InternalErrors` answers a bug with a JSON 500 itself. Starlette's own last-resort handler answers
  and then re-raises, and uvicorn closes the connection of any request whose app raised: one bug
  would cut a client's pooled keep-alive connection.
- `BodyLimit` refuses bodies over the limit with 413 before FastAPI buffers them.
"""

import logging
import re
import time
import uuid

from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

log = logging.getLogger(__name__)
access_log = logging.getLogger("prm.access")

REQUEST_ID_HEADER = "X-Request-ID"
# An id from the client is echoed only if it is short and plain, so it cannot forge log lines or headers.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_state(scope: Scope) -> dict:
    """The per-request state that `request.state` reads and writes (error type, tokens, request id)."""
    return scope.setdefault("state", {})


def error_body(scope: Scope, kind: str, message: str) -> dict:
    """The JSON of every error answer: `{"error", "type", "request_id"}`."""
    request_state(scope)["error_type"] = kind
    return {"error": message, "type": kind, "request_id": request_state(scope).get("request_id")}


class _HttpMiddleware:
    """Passes lifespan and websocket traffic through; `handle` sees each HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestLog(_HttpMiddleware):
    """Request ids, request metrics and one access-log line per request."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
        request_state(scope)["request_id"] = request_id
        status = 500

        async def stamp(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, stamp)
        finally:
            route = scope.get("route")
            endpoint = route.path if route is not None else "unmatched"
            outcome = "success" if status < 400 else request_state(scope).get("error_type", str(status))
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(endpoint=endpoint, outcome=outcome).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(seconds)
            tokens = request_state(scope).get("tokens")
            access_log.info(
                "%s %s %d %.1fms tokens=%s id=%s",
                scope["method"],
                endpoint,
                status,
                seconds * 1000,
                "-" if tokens is None else tokens,
                request_id,
                extra={
                    "method": scope["method"],
                    "route": endpoint,
                    "status": status,
                    "ms": round(seconds * 1000, 3),
                    "tokens": tokens,
                    "request_id": request_id,
                },
            )


class InternalErrors(_HttpMiddleware):
    """A bug becomes a JSON 500 that leaves the connection open; it is logged and counted."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = False

        async def watch(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as error:
            if answered:  # half an answer is out: only closing the connection can tell the client
                raise
            log.exception("unhandled error on %s", scope["path"])
            self.metrics.failures.labels(reason="internal_error").inc()
            body = error_body(scope, "internal_error", f"internal error: {type(error).__name__}")
            await JSONResponse(body, status_code=500)(scope, receive, send)


class BodyLimit(_HttpMiddleware):
    """Refuses bodies over `max_bytes` with 413, by Content-Length at once, else as they stream in.

    The body is read here (FastAPI would buffer it anyway) and replayed to the app; later
    receives go to the server, so disconnects are still seen.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_bytes: int):
        super().__init__(app, metrics)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, f"the body is {int(declared)} bytes; the limit is {self.max_bytes}")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, send, f"the body is over {self.max_bytes} bytes, the limit")
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, message: str) -> None:
        self.metrics.failures.labels(reason="too_large").inc()
        await JSONResponse(error_body(scope, "too_large", message), status_code=413)(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
