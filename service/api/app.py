"""The FastAPI application: routes, error handlers, request metrics, model loading at start-up."""

import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.errors import install_error_handlers
from service.api.routes import router
from service.config import ServeConfig
from service.metrics import Metrics
from service.runtime import Runtime


def create_app(config: ServeConfig, on_fatal: Callable[[], None] | None = None) -> FastAPI:
    metrics = Metrics()
    runtime = Runtime(config, metrics, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.start_loading()
        yield
        runtime.stop()

    app = FastAPI(
        title="prm-service",
        version=__version__,
        summary="Step-level scores from process reward models (Qwen2.5-Math-PRM family).",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.in_flight = 0
    app.include_router(router)
    install_error_handlers(app, metrics)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


class BodyLimit:
    """Refuses bodies over `max_bytes` with 413, by Content-Length at once, else as they stream in.

    The body is read here (FastAPI would buffer it anyway) and replayed to the app; later
    receives go to the server, so disconnects are still seen.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics):
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
        scope.setdefault("state", {})["error_type"] = "too_large"
        self.metrics.failures.labels(reason="too_large").inc()
        await JSONResponse({"error": message, "type": "too_large"}, status_code=413)(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class RequestMetrics:
    """Counts and times every request by route template (never by raw path) and outcome."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            endpoint = route.path if route is not None else "unmatched"
            outcome = "success" if status < 400 else scope.get("state", {}).get("error_type", str(status))
            self.metrics.requests.labels(endpoint=endpoint, outcome=outcome).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(time.perf_counter() - started)
