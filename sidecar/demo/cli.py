"""The demo's options and entry point (called by ``checkpoint-sidecar demo``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sidecar.server.argtypes import bounded, port
from sidecar.server.settings import budget_help, library_config

DEFAULT_RUNS = 40
DEFAULT_CONCURRENCY = 8
DEFAULT_SEED = 7
DEFAULT_PORT = 9464


_count = bounded(int, "a whole number", 1, 100_000)
_seconds = bounded(float, "a number of seconds", 0.0, 60.0, low_open=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser``."""
    parser.description = (
        "Run many reporting agents (examples/reporting_agent.py) with injected crashes and LLM "
        "timeouts; retries resume from checkpoints, abandoned runs expire. Shows live progress "
        "and a summary; serves Prometheus metrics while it runs. Without --redis-url and "
        "SIDECAR_REDIS_URL it starts a private embedded Valkey. Writes only keys under the "
        "'ckpt-demo' prefix."
    )
    parser.add_argument("--runs", type=_count, default=DEFAULT_RUNS, metavar="N",
                        help=f"reports to write (default {DEFAULT_RUNS})")  # fmt: skip
    parser.add_argument("--concurrency", type=_count, default=DEFAULT_CONCURRENCY, metavar="N",
                        help=f"runs at the same time (default {DEFAULT_CONCURRENCY})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                        help="seed of the failure plan: same seed, same failures "
                        f"(default {DEFAULT_SEED})")  # fmt: skip
    parser.add_argument("--slow-redis", type=_seconds, nargs="?", const=1.5, default=None,
                        metavar="SECONDS",
                        help="pause the embedded server this long (default 1.5 s) a quarter of the "
                        "way in: budget timeouts, then the circuit breaker")  # fmt: skip
    parser.add_argument("--keep-serving", action="store_true",
                        help="keep /metrics up after the summary until Ctrl-C")  # fmt: skip
    parser.add_argument("--redis-url", metavar="URL", default=os.environ.get("SIDECAR_REDIS_URL"),
                        help="use this Redis instead of the embedded one "
                        "(env SIDECAR_REDIS_URL)")  # fmt: skip
    parser.add_argument("--port", "--metrics-port", dest="port", type=port,
                        default=DEFAULT_PORT, metavar="PORT",
                        help=f"port of /metrics on 127.0.0.1, as `serve --port` (default "
                        f"{DEFAULT_PORT}; 0 = any free port; a taken port falls back to a free "
                        "one)")  # fmt: skip
    parser.add_argument("--abandon-ttl", type=_count, default=2, metavar="SECONDS",
                        help="TTL of the abandoned runs' checkpoints (default 2)")  # fmt: skip
    parser.add_argument("--budget-ms", type=float, default=None, metavar="MS",
                        help=budget_help())  # fmt: skip
    parser.add_argument("--langgraph", action="store_true",
                        help="run the report as a LangGraph graph on SidecarSaver "
                        "(examples/langgraph_report.py; needs the langgraph extra)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", dest="json_path",
                        help="also write the summary as JSON to PATH")  # fmt: skip
    parser.add_argument("--node", action="store_true",
                        help="also run reporting agents written in JavaScript (clients/node) "
                        "through the sidecar's HTTP API (needs node on PATH)")  # fmt: skip
    display = parser.add_mutually_exclusive_group()
    display.add_argument("--live", dest="live", action="store_true", default=None,
                         help="live display even when stdout is not a terminal")  # fmt: skip
    display.add_argument("--plain", dest="live", action="store_false",
                         help="no live display: print the agents' progress lines")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the demo with the parsed ``args``; returns the exit code (0: every run finished)."""
    from sidecar.demo.driver import Options, run_demo
    from sidecar.server.embedded import EmbeddedServerError
    from sidecar.server.runtime import SidecarStartError

    try:  # the library's setting: --budget-ms, else SIDECAR_BUDGET_MS, else its default
        budget_ms = library_config(budget_ms=args.budget_ms).budget_ms
    except ValueError as exc:
        sys.stderr.write(f"checkpoint-sidecar demo: error: {exc}\n")
        return 1
    opts = Options(
        runs=args.runs,
        concurrency=args.concurrency,
        seed=args.seed,
        slow_redis_s=args.slow_redis,
        keep_serving=args.keep_serving,
        redis_url=args.redis_url or None,
        metrics_port=args.port,
        json_path=args.json_path,
        abandon_ttl_s=args.abandon_ttl,
        budget_ms=budget_ms,
        live=args.live,
        node=args.node,
        langgraph=args.langgraph,
    )
    if opts.node:
        from sidecar.demo.node import unavailable

        why = unavailable()
        if why is not None:
            sys.stderr.write(f"checkpoint-sidecar demo: error: --node: {why}\n")
            return 1
    try:
        return run_demo(opts)
    except (EmbeddedServerError, SidecarStartError, OSError) as exc:
        sys.stderr.write(f"checkpoint-sidecar demo: error: {exc}\n")
        return 1
