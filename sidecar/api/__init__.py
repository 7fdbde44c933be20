"""The sidecar's HTTP API: checkpoints for agents in any language, same guarantees.

Served by ``checkpoint-sidecar serve`` on its own listener (default 127.0.0.1:9465), apart from
``/metrics``. One module per job::

    routes.py    the route table (method, path template, handler, what OpenAPI says)
    handlers.py  the verbs, each one call of the shared strict Checkpointer
    app.py       raw ASGI: auth, routing, tracing (traceparent), error mapping
    http.py      request body within a limit, strict path decoding, responses
    problems.py  application/problem+json and the stable error codes
    auth.py      bearer token (constant-time), loopback/Unix-socket rule
    openapi.py   the OpenAPI 3.1 description generated from the route table
    server.py    the uvicorn listener (TCP or Unix socket)
    cli.py       the ``serve`` flags and the call that runs the listener
    metrics.py   the API's checkpoint metrics on the sidecar's /metrics
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.api.app import ApiApp
    from sidecar.api.server import ApiServer, ApiStartError

__all__ = ["ApiApp", "ApiServer", "ApiStartError"]


def __getattr__(name: str) -> Any:
    """Imported on first use: ``serve``'s flags (sidecar.api.cli) must load with the bare
    install, which has no uvicorn; only serving the API needs ``[server]``."""
    if name == "ApiApp":
        from sidecar.api.app import ApiApp

        return ApiApp
    if name in ("ApiServer", "ApiStartError"):
        from sidecar.api import server

        return getattr(server, name)
    raise AttributeError(f"module 'sidecar.api' has no attribute {name!r}")
