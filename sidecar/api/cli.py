"""The ``serve`` flags of the API listener, and the one call ``serve`` makes to run it.

``--api-host`` (default 127.0.0.1), ``--api-port`` (default 9465), ``--api-socket PATH``,
``--no-api``, ``--api-token-file``, ``--api-redis-url``; each also read from ``SIDECAR_API_*``.

``--api-redis-url`` exists because the API writes checkpoints on the agents' behalf: in a
least-privilege deployment the sidecar's own Redis user may only watch expiries, so the API
connects as the agents' user (docs/operations.md). Without it, the sidecar's URL is used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from pydantic import ValidationError

from sidecar.server.argtypes import port

if TYPE_CHECKING:
    from sidecar.server.runtime import Sidecar

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 9465


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the API listener's flags to the ``serve`` parser."""
    env = os.environ.get
    g = p.add_argument_group("HTTP API (checkpoints for agents in any language)")
    g.add_argument("--api-host", metavar="HOST", default=env("SIDECAR_API_HOST", DEFAULT_API_HOST),
                   help="address of the API listener; anything but loopback needs "
                   "--api-token-file (env SIDECAR_API_HOST, default 127.0.0.1)")  # fmt: skip
    g.add_argument("--api-port", type=port, metavar="PORT",
                   default=env("SIDECAR_API_PORT", str(DEFAULT_API_PORT)),
                   help="API port; 0 picks a free one (env SIDECAR_API_PORT, default "
                   f"{DEFAULT_API_PORT})")  # fmt: skip
    g.add_argument("--api-socket", metavar="PATH", default=env("SIDECAR_API_SOCKET"),
                   help="serve the API on this Unix socket instead of TCP "
                   "(env SIDECAR_API_SOCKET)")  # fmt: skip
    g.add_argument("--api-token-file", metavar="FILE", default=env("SIDECAR_API_TOKEN_FILE"),
                   help="require Authorization: Bearer <the token in FILE> on every API request "
                   "(env SIDECAR_API_TOKEN_FILE)")  # fmt: skip
    g.add_argument("--api-redis-url", metavar="URL", default=env("SIDECAR_API_REDIS_URL"),
                   help="Redis URL of the API's checkpoints, e.g. with the agents' ACL user "
                   "(env SIDECAR_API_REDIS_URL; default: the sidecar's --redis-url)")  # fmt: skip
    g.add_argument("--no-api", dest="api", action="store_false",
                   help="do not serve the HTTP API")  # fmt: skip


@contextlib.asynccontextmanager
async def serve_api(args: argparse.Namespace, sidecar: Sidecar) -> AsyncIterator[None]:
    """Run the API beside the sidecar's metrics server for the duration of the block.

    Its Checkpointer's metrics are served by the sidecar's ``/metrics``. Prints
    ``api <url> (...)`` once it listens. A start failure raises ``SidecarStartError``.
    """
    from sidecar.api.metrics import api_registry
    from sidecar.api.server import ApiStartError, ApiThread
    from sidecar.server.runtime import SidecarStartError

    if not getattr(args, "api", True):
        yield
        return
    config = sidecar.config
    redis_url = getattr(args, "api_redis_url", None)
    if redis_url:
        config = config.model_copy(update={"redis_url": redis_url})
        try:
            type(config).model_validate(config.model_dump())
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            raise SidecarStartError(f"API: --api-redis-url: {message}") from None
    api = ApiThread(
        config, host=args.api_host, port=args.api_port, socket_path=args.api_socket,
        token_file=args.api_token_file, registry=api_registry(sidecar.registry),
    )  # fmt: skip
    try:
        await api.start()
    except ApiStartError as exc:
        await api.stop()
        raise SidecarStartError(f"API: {exc}") from None
    try:
        assert api.server is not None
        auth = "bearer token required" if api.server.authorizer.required else "no token"
        print(f"api {api.server.url} ({auth})", flush=True)
        sidecar.add_component("api", api.running)  # /healthz: 503 if the API thread dies
        yield
    finally:
        sidecar.remove_component("api")
        await api.stop()
