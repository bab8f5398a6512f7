"""The FastAPI application: routes, error handlers, middleware, model loading at start-up."""

from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service import __version__
from service.api.errors import install_error_handlers
from service.api.middleware import BodyLimit, InternalErrors, RequestLog
from service.api.protocols import router as protocols
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

    # /docs and /redoc with the assets that fastapi-offline ships: an air-gapped cluster reaches no CDN.
    app = FastAPIOffline(
        title="prm-service",
        version=__version__,
        summary="Step-level scores from process reward models (Qwen2.5-Math-PRM family).",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.include_router(router)
    app.include_router(protocols)  # vLLM's /pooling, OpenRLHF's /get_reward
    install_error_handlers(app, metrics)
    # Each added middleware wraps the ones before: RequestLog is outermost, BodyLimit innermost.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, metrics=metrics)
    app.add_middleware(InternalErrors, metrics=metrics)
    app.add_middleware(RequestLog, metrics=metrics)
    return app
