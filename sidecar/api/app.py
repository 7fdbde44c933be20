"""The API as a raw ASGI app: authenticate, route, trace, call the handler, map errors.

No web framework: the hot path is a dict lookup of headers, a walk over eight routes and one
awaited Checkpointer call, which keeps the hop over an in-process library call small. Each
request gets a SERVER span named by its route template (never the raw path), whose parent is
the incoming W3C ``traceparent``; the Checkpointer's CLIENT spans are its children.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)

from sidecar.api.auth import Authorizer
from sidecar.api.handlers import Api
from sidecar.api.http import ClientGone, Receive, Request, Response, Scope, Send
from sidecar.api.problems import PROBLEM_TYPE, Problem, from_error
from sidecar.api.routes import Handler, Router
from sidecar.checkpointer import Checkpointer
from sidecar.errors import CheckpointError

log = logging.getLogger("sidecar.api")
_PROBLEM = PROBLEM_TYPE.encode()
RECHECK_S = 1.0  # how soon a tracer provider set after start is noticed


class ApiApp:
    """The ASGI callable serving :data:`sidecar.api.routes.ROUTES` over one Checkpointer."""

    def __init__(
        self,
        cp: Checkpointer,
        authorizer: Authorizer | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        from sidecar.api.openapi import render

        self.api = Api(cp, render())
        self.router = Router()
        self.authorizer = authorizer or Authorizer(None)
        self.tracer = trace.get_tracer("sidecar.api", tracer_provider=tracer_provider)
        self._provider = tracer_provider
        self._cooldown = cp.config.breaker_cooldown_s
        self._traced = False
        self._recheck_at = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        try:
            self.authorizer.check(scope["headers"])
            path: bytes = scope.get("raw_path") or scope["path"].encode()
            route, params = self.router.resolve(method, path)
        except Problem as problem:
            await _problem(problem).send(send)
            return
        request = Request.of(scope, receive, params)
        if not self._tracing():  # no SDK: the spans and their context would record nothing
            try:
                response = await self._answer(route.handler, request)
            except ClientGone:
                return
            await response.send(send)
            return
        parent = None
        if b"traceparent" in request.headers:
            parent = propagate.extract({
                k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.items()
            })  # fmt: skip
        span = self.tracer.start_span(
            f"{method} {route.template}", context=parent, kind=SpanKind.SERVER
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            response = await self._answer(route.handler, request)
        except ClientGone:
            span.set_status(Status(StatusCode.ERROR, "client disconnected"))
            span.end()
            return
        finally:
            otel_context.detach(token)
        # The answer first, then the span's attributes and end (~20-30 µs of SDK work): the
        # client reads the response meanwhile, and the span covers the write as it should.
        try:
            await response.send(send)
        finally:
            if span.is_recording():
                span.set_attributes({
                    "http.request.method": method, "http.route": route.template,
                    "http.response.status_code": response.status,
                })  # fmt: skip
                if response.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()

    def _tracing(self) -> bool:
        """False while no tracer provider is set (the API's and the library's spans are then
        non-recording, no exemplar is taken): ~5 us a request saved. A provider set later
        (globally) is used from then on: looked up again at most every ``RECHECK_S`` (the
        lookup itself took ~6 us a request here), and once set it stays (OpenTelemetry's
        global provider is set once)."""
        if self._traced:
            return True
        now = time.monotonic()
        if now >= self._recheck_at:
            provider = self._provider or trace.get_tracer_provider()
            self._traced = not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)
            self._recheck_at = now + RECHECK_S
        return self._traced

    async def _answer(self, handler: Handler, request: Request) -> Response:
        try:
            response = await handler(self.api, request)
        except Problem as problem:
            return _problem(problem)
        except CheckpointError as exc:
            return _problem(from_error(exc, cooldown_s=self._cooldown))
        except ClientGone:
            raise
        except Exception:
            log.exception("API request failed")
            return _problem(Problem("internal_error", "the request failed; see the sidecar log"))
        return response


def _problem(problem: Problem) -> Response:
    return Response(problem.status, problem.body(), _PROBLEM, problem.headers)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
