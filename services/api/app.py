"""The HTTP API: a user's cached recommendations, straight from Redis, and erasing a user.

- ``GET /users/{user_id}/recommendations?n=20&category=shoes&exclude=sku-9`` — the user's top
  ``n`` (1 ≤ n ≤ ``api_max_n``), never a hidden or expired item; ``category`` and ``exclude`` are
  repeatable; an unknown user gets the popular list (source ``fallback``), a filtered list that is
  short is filled with popular items (source ``mixed``); 404 if there is nothing yet.
- ``DELETE /users/{user_id}`` — erase the user (``streamrec users forget``): 202 once Kafka took
  the request; needs ``Authorization: Bearer <STREAMREC_API_ADMIN_TOKEN>`` (401 without, 503 while
  no token is configured). Only this endpoint needs Kafka, connected at its first request.
- ``GET /items/{item_id}/similar?n=20&category=…`` — the item's nearest items in the served model
  (source ``personal``), or co-occurring/popular items (``fallback``); 404 if there are none yet.
- ``POST /recommendations`` ``{"items": [...], "n", "category", "exclude"}`` — an anonymous
  session's recommendations, scored on demand with the served ONNX model (services/api/sessions.py);
  popular items (``fallback``) without a model or a known item; 503 if there are none either.
- ``GET /healthz`` — the process is alive. ``GET /readyz`` — Redis answers.
- ``GET /metrics`` — Prometheus: requests by endpoint and status, and their latency.

Errors are JSON ``{"detail": "..."}``: 422 for a bad user id or n, 503 while Redis is unreachable.
The api does not start with credentials Redis refuses (one clear error line, exit code 2).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime. The
# routes are in services/api/read_routes.py and services/api/admin_routes.py.

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamrec.api.admin_routes import admin_routes
from streamrec.api.async_reader import AsyncRecommendationClient
from streamrec.api.forget_requests import ForgetRequests
from streamrec.api.read_routes import read_routes
from streamrec.api.reader import RecommendationClient
from streamrec.shared.logs import get_logger
from streamrec.shared.redaction import redacted_url
from streamrec.shared.redis_connection import is_permanent, redis_url
from streamrec.shared.settings import Settings

log = get_logger(__name__)

REQUESTS = Counter("streamrec_api_requests_total", "HTTP requests, by route and status.", ["route", "status"])
LATENCY = Histogram(
    "streamrec_api_request_seconds",
    "HTTP request latency, by route.",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


class RequestMetrics:
    """ASGI middleware: each request's latency and status, per route template (one series per
    endpoint, not one per user). Plain ASGI rather than ``@app.middleware("http")``, which runs
    every request through a task and memory streams of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # an exception before the response starts is a 500

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # set by the router on match
            LATENCY.labels(route).observe(time.perf_counter() - started)
            REQUESTS.labels(route, str(status[0])).inc()


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI application reading the Redis at ``settings.redis_url``."""
    redis_url(settings)  # a ConfigError saying how to set it, if unset
    client = AsyncRecommendationClient(settings=settings)
    forget_requests = ForgetRequests(settings)  # Kafka only at the first DELETE

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.close()
        forget_requests.close()

    app = FastAPI(
        title="streamrec",
        summary="Real-time recommendations, read from the scorer's cache in Redis.",
        lifespan=lifespan,
    )

    app.add_middleware(RequestMetrics)

    @app.exception_handler(redis.RedisError)
    async def redis_unavailable(_request: Request, exc: redis.RedisError) -> JSONResponse:
        # Any Redis failure is the backend being unavailable to this read-only service; refused
        # credentials (e.g. a password rotated on the server) are an error to fix, not to wait out.
        level = logging.ERROR if is_permanent(exc) else logging.WARNING
        log.log(level, "Redis request failed", extra={"error": str(exc), "error_type": type(exc).__name__})
        # The cause goes to the log only: it names servers and accounts a client has no business seeing.
        return JSONResponse(
            status_code=503, content={"detail": "recommendations store (Redis) is unavailable"}
        )

    app.include_router(read_routes(settings, client))
    app.include_router(admin_routes(settings, forget_requests))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: Redis answers (503 otherwise, so a load balancer stops routing here)."""
        await client.ping()  # a RedisError becomes a 503 through the handler above
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def check_redis_access(settings: Settings) -> None:
    """Refuse to start if Redis refuses the credentials or the reads (ACL); the message names the
    user and server. An unreachable Redis is only logged: ``/readyz`` answers 503 until it is back.
    """
    client = RecommendationClient(settings=settings)
    try:
        client.ping()
        client.model_version()  # a GET of a streamrec key: the ACL user may read them
    except redis.ConnectionError as exc:
        if is_permanent(exc):
            raise
        log.warning(
            "Redis unreachable at start; /readyz answers 503 until it answers",
            extra={"redis": redacted_url(settings.redis_url), "error": str(exc)},
        )
    finally:
        client.close()


def run(settings: Settings) -> None:
    """Serve the API with uvicorn on ``settings.api_host:settings.api_port`` until SIGINT/SIGTERM.

    Raises a ConfigError (exit code 2 from the CLI) at once if Redis refuses the credentials.
    """
    app = create_app(settings)
    check_redis_access(settings)
    log.info("api starting", extra={"host": settings.api_host, "port": settings.api_port})
    # log_config=None: keep streamrec's structured logging instead of uvicorn's own format.
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None)
