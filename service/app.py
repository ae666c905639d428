"""``create_app(settings)``: wires the runtime (registry + batchers), routers, middleware and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from . import __version__, openapi
from .api import problems
from .api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from .api.routes import audit, dicomweb, display, explain, features, health, localize, models, oip, predict, ui
from .config import Settings
from .metrics import Metrics
from .runtime import Runtime

log = logging.getLogger("xaas")

DESCRIPTION = """Explanation-as-a-service for image models: predictions, heatmaps (Grad-CAM and friends) and boxes over
HTTP. Errors are RFC 9457 `application/problem+json`; every response carries `X-Request-ID`."""


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None,
               on_load_failure: Callable[[str], None] | None = None, request_id_from_proxy: bool = False,
               served_by: str | None = None) -> FastAPI:
    """``request_id_from_proxy`` and ``served_by``: for a replica behind Ray Serve's proxy (see service/ray_app.py and
    :class:`RequestContextMiddleware`)."""
    settings = settings or Settings()
    metrics = runtime.metrics if runtime else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or Runtime(settings, metrics=metrics)
        app.state.runtime = rt
        rt.start(on_failure=on_load_failure)
        try:
            yield
        finally:
            rt.stop()

    app = FastAPI(title="xaas", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    problems.install(app)
    openapi.install(app)
    for router in (health.router, models.router, predict.router, explain.router, localize.router, features.router,
                   oip.router, dicomweb.router, display.router, ui.router, audit.router):
        app.include_router(router)
    # Added last = outermost: request id → CORS → API key → body limit → routes.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout)
    keys = settings.all_api_keys()
    if keys:
        exempt = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}  # probes carry no key
        exempt |= {"/metrics"} if settings.metrics_public else set()
        # the review page and its assets hold no data: they load keyless, then send the key the user types
        exempt |= {"/", "/ui"}
        app.add_middleware(ApiKeyMiddleware, keys=keys, exempt=frozenset(exempt), exempt_prefixes=("/ui/assets/",))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "x-api-key", "content-type", "x-request-id",
                                          "if-none-match"],
                           expose_headers=["x-request-id", "retry-after", "etag", "x-cache"], max_age=600)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, id_from_proxy=request_id_from_proxy,
                       served_by=served_by)
    return app
