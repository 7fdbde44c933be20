"""``checkpoint-sidecar``: the command line (also ``python -m sidecar``).

Subcommands: ``serve`` (the sidecar process), ``dashboards`` and ``alerts`` (generated from
:mod:`sidecar.names` by :mod:`sidecar.ops`), ``demo`` (:mod:`sidecar.demo`). Heavy imports
happen at dispatch, so ``--help`` is quick. A bad flag prints a short usage line and one error
line, and exits 2; a failure at start prints one error line and exits 1; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn

from sidecar.server.argtypes import bounded, port, positive, ratio

PROG = "checkpoint-sidecar"
USAGE_ERROR = 2
connect_seconds = bounded(float, "a number of seconds", 0.0, 3600.0)


def version() -> str:
    try:
        return metadata.version("checkpoint-sidecar")
    except metadata.PackageNotFoundError:
        from sidecar import __version__

        return __version__


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage and a one-line error instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"usage: {self.prog} [options]  (see {self.prog} --help)\n")
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _add_serve(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the sidecar: /metrics, /healthz, /readyz and the TTL-expiry watcher",
        description=(
            "Serve Prometheus metrics and health endpoints, and count checkpoints that expired "
            "unused (Redis expiry events). Without --redis-url and SIDECAR_REDIS_URL it starts "
            "a private embedded Valkey. Stops cleanly (exit 0) on SIGTERM or SIGINT."
        ),
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis to watch: redis://[user:password@]host:port/db, rediss://, unix://, or "
        "redis+cluster:// / rediss+cluster:// for every node of a cluster (env SIDECAR_REDIS_URL)",
    )
    where.add_argument(
        "--embedded",
        action="store_true",
        help="start a private Valkey on loopback (needs checkpoint-sidecar[embedded]) and print "
        "the URL agents should use",
    )
    p.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        help="key prefix of the agents' checkpoints (env SIDECAR_KEY_PREFIX, default ckpt)",
    )
    p.add_argument(
        "--host",
        default=_env("SIDECAR_HOST", "127.0.0.1"),
        help="HTTP address to bind; 0.0.0.0 to let Prometheus in from outside the pod "
        "(env SIDECAR_HOST, default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=port,
        default=_env("SIDECAR_PORT", "9464"),
        help="HTTP port; 0 picks a free one (env SIDECAR_PORT, default 9464)",
    )
    p.add_argument(
        "--multiproc-dir",
        metavar="DIR",
        default=_env("SIDECAR_MULTIPROC_DIR"),
        help="aggregate the metrics agents write into this PROMETHEUS_MULTIPROC_DIR "
        "(env SIDECAR_MULTIPROC_DIR; falls back to PROMETHEUS_MULTIPROC_DIR)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=_env("SIDECAR_DATA_DIR"),
        help="with the embedded server: keep its data (append-only file) in DIR across "
        "restarts (env SIDECAR_DATA_DIR; default: nothing kept)",
    )
    p.add_argument(
        "--embedded-port",
        type=port,
        default=_env("SIDECAR_EMBEDDED_PORT", "0"),
        help="port of the embedded server (env SIDECAR_EMBEDDED_PORT; default: a free port)",
    )
    p.add_argument(
        "--connect-timeout",
        type=connect_seconds,
        metavar="SECONDS",
        default=_env("SIDECAR_CONNECT_TIMEOUT", "30"),
        help="how long to wait at start for Redis to answer (env SIDECAR_CONNECT_TIMEOUT, "
        "default 30)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        type=str.lower,
        default=_env("SIDECAR_LOG_LEVEL", "info"),
        help="log level; debug logs each expired run's user and run id (env SIDECAR_LOG_LEVEL, "
        "default info)",
    )
    from sidecar.api.cli import add_arguments as add_api_arguments

    add_api_arguments(p)
    p.set_defaults(handler=_run_serve, parser=p)


def _add_budget_and_slo(p: argparse.ArgumentParser) -> None:
    """--budget-ms and --slo, defaulting to the library's own (one source of truth)."""
    from sidecar.ops.rules import DEFAULT_BUDGET_MS, DEFAULT_SLO

    p.add_argument(
        "--budget-ms",
        type=positive,
        default=DEFAULT_BUDGET_MS,
        help=f"overhead budget in ms; a histogram bucket edge (default {DEFAULT_BUDGET_MS:g})",
    )
    p.add_argument(
        "--slo",
        type=ratio,
        default=DEFAULT_SLO,
        help=f"share of calls within budget (default {DEFAULT_SLO})",
    )


def _add_dashboards(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "dashboards",
        help="write the Grafana dashboards (JSON) and optionally render an overview PNG",
        description="Generate the Grafana dashboards from the metric names in sidecar.names.",
    )
    p.add_argument("--out", metavar="DIR", default="dashboards", help="output directory")
    _add_budget_and_slo(p)
    p.add_argument("--render", metavar="PNG", help="also render the overview panel to PNG")
    p.add_argument(
        "--prometheus-url",
        metavar="URL",
        default="http://127.0.0.1:9090",
        help="Prometheus to query for --render (default http://127.0.0.1:9090)",
    )
    p.add_argument(
        "--render-window",
        metavar="SECONDS",
        type=bounded(int, "a number of seconds", 10, 7 * 24 * 3600),
        default=900,
        help="how much recent data --render draws (default 900)",
    )
    p.set_defaults(handler=_run_dashboards, parser=p)


def _add_alerts(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "alerts",
        help="write the Prometheus alerting and recording rules (YAML)",
        description="Generate the Prometheus rules from the metric names in sidecar.names.",
    )
    p.add_argument("--out", metavar="FILE", default="alerts/checkpoint-rules.yml", help="output")
    _add_budget_and_slo(p)
    p.add_argument(
        "--runbook-url",
        metavar="URL",
        default="docs/runbooks.md",
        help="where your operators read docs/runbooks.md; each alert links to its heading",
    )
    p.set_defaults(handler=_run_alerts, parser=p)


def _add_demo(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo (agents, failures, resume, metrics)",
        description="Run the end-to-end demo of checkpoint-sidecar.",
    )
    add_arguments = _demo_function("add_arguments")
    if add_arguments is not None:
        add_arguments(p)
    p.set_defaults(handler=_run_demo, parser=p)


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Budget-bounded Redis checkpoints for LLM agents: the sidecar process "
        "(metrics, TTL-expiry watcher, health) and its tooling.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in (_add_serve, _add_dashboards, _add_alerts, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # report it against the subcommand, whose usage is the one that helps
        sub: argparse.ArgumentParser = getattr(args, "parser", parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.error("choose a command: serve, dashboards, alerts or demo")
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _fail(command: str, message: str) -> int:
    sys.stderr.write(f"{PROG} {command}: error: {message}\n")
    return 1


def _run_serve(args: argparse.Namespace) -> int:
    from sidecar.server.serve import serve

    return serve(args)


def _ops(command: str, function: str) -> Callable[..., object] | None:
    try:
        from sidecar import ops
    except ImportError as exc:
        _fail(
            command, f"sidecar.ops is unavailable ({exc}); install checkpoint-sidecar[dashboards]"
        )
        return None
    found: Callable[..., object] | None = getattr(ops, function, None)
    if found is None:
        _fail(command, f"sidecar.ops.{function} is not available in this version")
    return found


def _run_dashboards(args: argparse.Namespace) -> int:
    generate = _ops("dashboards", "generate_dashboards")
    if generate is None:
        return USAGE_ERROR
    try:
        generate(args.out, budget_ms=args.budget_ms, slo=args.slo)
        if args.render:
            render = _ops("dashboards", "render_overview_png")
            if render is None:
                return USAGE_ERROR
            try:
                render(args.prometheus_url, args.render, window_s=args.render_window)
            except OSError as exc:
                return _fail("dashboards", f"cannot render from {args.prometheus_url}: {exc}")
    except (OSError, ValueError, ImportError) as exc:
        return _fail("dashboards", str(exc))
    print(
        f"dashboards written to {args.out}"
        + (f", overview in {args.render}" if args.render else "")
    )
    return 0


def _run_alerts(args: argparse.Namespace) -> int:
    generate = _ops("alerts", "generate_rules")
    if generate is None:
        return USAGE_ERROR
    try:
        generate(args.out, budget_ms=args.budget_ms, slo=args.slo, runbook_url=args.runbook_url)
    except (OSError, ValueError, ImportError) as exc:
        return _fail("alerts", str(exc))
    print(f"rules written to {args.out}")
    return 0


def _demo_function(name: str) -> Callable[..., Any] | None:
    """``sidecar.demo.<name>``, or None when the demo is not installed (or not finished)."""
    try:
        module = importlib.import_module("sidecar.demo")
    except ImportError:
        return None
    found: Callable[..., Any] | None = getattr(module, name, None)
    return found


def _run_demo(args: argparse.Namespace) -> int:
    run = _demo_function("run")
    if run is None:
        _fail("demo", "the demo is not available in this installation (no sidecar.demo.run)")
        return USAGE_ERROR
    code = run(args)
    return int(code) if code is not None else 0


if __name__ == "__main__":
    sys.exit(main())
