"""``checkpoint-sidecar serve``: settings, the embedded server, signals, exit codes.

HTTP is bound and served at once; Redis is the watcher's business, in the background (an
outage is reported on /metrics and /readyz's body, never an exit). A missing Redis URL is an
error unless ``--embedded`` asks for a private server: a production sidecar whose variable is
missing must not quietly watch an empty server of its own.

SIGTERM and SIGINT are handled here (not by uvicorn, which would re-raise them and make the
exit code -15): stop accepting, unsubscribe, close Redis, stop the embedded server, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from sidecar.config import CheckpointConfig, redact_url

log = logging.getLogger("sidecar.server")

_MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
_USAGE = "usage: checkpoint-sidecar serve [--redis-url URL | --embedded] [options]  (see --help)\n"


class ServeError(Exception):
    """A failure at start, reported as one line."""


def serve(args: argparse.Namespace) -> int:
    """Run the sidecar until SIGTERM/SIGINT; 0 on a clean stop, 1 when it cannot start."""
    from sidecar.server.logs import configure_logging

    configure_logging(args.log_level)
    multiproc_dir = _multiproc_dir(args.multiproc_dir)
    try:
        _check_extra()
        config = _config(args)
        with _redis(args, config) as redis_url:
            _configure_tracing()
            return asyncio.run(_serve(args, config, redis_url, multiproc_dir))
    except ServeError as exc:
        sys.stderr.write(_USAGE)
        sys.stderr.write(f"checkpoint-sidecar serve: error: {exc}\n")
        return 1


def _check_extra() -> None:
    missing = [name for name in ("uvicorn",) if importlib.util.find_spec(name) is None]
    if missing:
        raise ServeError(
            f"{', '.join(missing)} is not installed: pip install 'checkpoint-sidecar[server]'"
        )


def _multiproc_dir(flag: str | None) -> str | None:
    """The agents' metrics directory; PROMETHEUS_MULTIPROC_DIR is taken out of our own env.

    The sidecar's own metrics never use prometheus_client's mmap values (see
    :mod:`sidecar.server.metrics`); removing the variable also keeps any library metric created
    in this process in memory, out of the agents' directory.
    """
    inherited = None
    for name in _MULTIPROC_ENV:
        inherited = os.environ.pop(name, None) or inherited
    return flag or inherited


def _config(args: argparse.Namespace) -> CheckpointConfig:
    overrides: dict[str, Any] = {}
    if args.redis_url:
        overrides["redis_url"] = args.redis_url
    if args.key_prefix:
        overrides["key_prefix"] = args.key_prefix
    try:
        return CheckpointConfig(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "setting"
        message = str(first["msg"]).removeprefix("Value error, ")
        flag = "--" + name.replace("_", "-")
        raise ServeError(f"invalid {flag} / SIDECAR_{name.upper()}: {message}") from None


@contextlib.contextmanager
def _redis(args: argparse.Namespace, config: CheckpointConfig) -> Iterator[str]:
    """The URL to watch; starts (and finally stops) the embedded server when asked."""
    explicit = bool(args.redis_url) or "redis_url" in config.model_fields_set
    if not args.embedded:
        if not explicit:
            raise ServeError(
                "no Redis to watch: set --redis-url or SIDECAR_REDIS_URL "
                "(or pass --embedded for a private server)"
            )
        yield config.redis_url
        return
    from sidecar.server.embedded import EmbeddedServer, EmbeddedServerError

    try:
        server = EmbeddedServer(
            port=args.embedded_port or None,
            data_dir=args.data_dir,
            appendonly=bool(args.data_dir),
        ).start()
    except EmbeddedServerError as exc:
        raise ServeError(str(exc)) from None
    try:
        print(
            f"embedded Valkey at {server.url}; agents: SIDECAR_REDIS_URL={server.url}", flush=True
        )
        log.info(
            "embedded server started",
            extra={"redis_url": server.url, "data_dir": str(server.data_dir)},
        )
        yield server.url
    finally:
        server.stop()


def _configure_tracing() -> None:
    """Set up the OpenTelemetry SDK when the standard OTEL_* environment asks for traces."""
    wanted = any(
        os.environ.get(name)
        for name in (
            "OTEL_TRACES_EXPORTER",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        )
    )
    if not wanted or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    try:
        from sidecar.telemetry import configure_tracing

        configure_tracing(os.environ.get("OTEL_SERVICE_NAME", "checkpoint-sidecar"))
    except (ImportError, ValueError) as exc:
        log.warning("tracing not configured: %s", exc)


async def _serve(
    args: argparse.Namespace, config: CheckpointConfig, redis_url: str, multiproc_dir: str | None
) -> int:
    from sidecar.api.cli import serve_api
    from sidecar.server.runtime import Sidecar, SidecarStartError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    try:
        sidecar = Sidecar(
            redis_url,
            key_prefix=config.key_prefix,
            host=args.host,
            port=args.port,
            multiproc_dir=multiproc_dir,
            redis_timeout=args.connect_timeout,
            watcher_slots=args.watcher_slots,
        )
        await sidecar.start(wait=False)  # Redis comes in the background
        try:
            print(f"serving {sidecar.metrics_url} (watching {redact_url(redis_url)})", flush=True)
            async with serve_api(args, sidecar):  # the HTTP API beside /metrics (sidecar.api)
                await sidecar.run_until(stop)
        finally:
            await sidecar.stop()
    except SidecarStartError as exc:
        raise ServeError(str(exc)) from None
    log.info("sidecar stopped")
    return 0


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("received %s: stopping", sig.name)
    stop.set()
