"""Optional Bearer API keys.

With no keys configured everything is open (a local or private deployment). With API keys,
the scoring routes need one; /admin/* needs an admin key (and is closed while only API keys
are set); /health and /ready stay public, /metrics too unless --protect-metrics.
Keys are compared in constant time, every configured key each time.
The checks are coroutines, though they never wait: FastAPI runs a plain function dependency in its thread
pool, a thread hop on every scoring request.
"""

import hmac

from fastapi import Request

from service.config import ServeConfig


class Unauthorized(Exception):
    """Missing or wrong credentials (HTTP 401)."""


class Forbidden(Exception):
    """Valid credentials that do not open this route (HTTP 403)."""


def _presented(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def _matches(key: str, keys: tuple[str, ...]) -> bool:
    found = False
    for candidate in keys:  # no early exit: timing does not tell which key, or how many, matched
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def _config(request: Request) -> ServeConfig:
    return request.app.state.runtime.config


async def require_api_key(request: Request) -> None:
    config = _config(request)
    if not config.api_keys and not config.admin_keys:
        return
    key = _presented(request)
    if key is None or not _matches(key, config.api_keys + config.admin_keys):
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")


async def require_admin_key(request: Request) -> None:
    config = _config(request)
    if not config.api_keys and not config.admin_keys:
        return
    key = _presented(request)
    if key is None:
        raise Unauthorized("an admin key is required: Authorization: Bearer <key>")
    if not _matches(key, config.admin_keys):
        if _matches(key, config.api_keys):
            raise Forbidden("this key may score but not administer")
        raise Unauthorized("an admin key is required: Authorization: Bearer <key>")


async def require_metrics_key(request: Request) -> None:
    if _config(request).protect_metrics:
        await require_api_key(request)
