"""The sidecar's HTTP surface as a plain ASGI app: ``/metrics``, ``/healthz``, ``/readyz``.

``/metrics`` is prometheus_client's own ASGI app (it negotiates OpenMetrics, with exemplars,
when the scraper asks for it). No endpoint ever serves checkpoint content.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, make_asgi_app

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def make_app(
    registry: CollectorRegistry, readiness: Readiness, liveness: Readiness | None = None
) -> ASGIApp:
    """The ASGI app: ``readiness()`` returns ``(ready, details)`` for ``/readyz``, and
    ``liveness()`` the same for ``/healthz`` (always alive when not given)."""
    metrics_app: ASGIApp = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path not in ("/metrics", "/healthz", "/readyz"):
            await _json(send, 404, {"error": "not found", "endpoints": _ENDPOINTS})
        elif method not in ("GET", "HEAD"):
            await _json(send, 405, {"error": "method not allowed"}, [(b"allow", b"GET, HEAD")])
        elif path == "/metrics":
            await metrics_app(scope, receive, send)
        elif path == "/healthz":
            alive, details = liveness() if liveness is not None else (True, {})
            await _json(
                send, 200 if alive else 503, {"status": "ok" if alive else "wedged", **details}
            )
        else:
            ready, details = readiness()
            await _json(send, 200 if ready else 503, {"status": _status(ready), **details})

    return app


_ENDPOINTS = ["/metrics", "/healthz", "/readyz"]


def _status(ready: bool) -> str:
    return "ready" if ready else "not ready"


async def _json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body, sort_keys=True).encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
