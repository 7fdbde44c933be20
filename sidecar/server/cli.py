"""``checkpoint-sidecar``: the command line (also ``python -m sidecar``).

Subcommands: ``serve`` (the sidecar process), ``dashboards`` and ``alerts`` (generated from
:mod:`sidecar.names` by :mod:`sidecar.ops`), ``demo`` (:mod:`sidecar.demo`). Heavy imports
happen at dispatch, so ``--help`` is quick. A bad flag prints a short usage line and one error
line, and exits 2; a failure at start prints one error line and exits 1; never a traceback.

Conventions every subcommand keeps: settings the library has come from the same
``CheckpointConfig`` (flag, then ``SIDECAR_*``, then default: :mod:`sidecar.server.settings`),
one flag name per meaning (``--redis-url``, ``--budget-ms``, ``--port``, ``--out``), ``--out -``
writes to standard output, and every ``--help`` shows each option's default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn

from sidecar.server.argtypes import bounded, port, positive, ratio
from sidecar.server.settings import budget_help, library_config

PROG = "checkpoint-sidecar"
USAGE_ERROR = 2
connect_seconds = bounded(float, "a number of seconds", 0.0, 3600.0, low_open=True)


def version() -> str:
    try:
        return metadata.version("checkpoint-sidecar")
    except metadata.PackageNotFoundError:
        from sidecar import __version__

        return __version__


class DefaultsFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` after an option's help unless the help already names its default
    (``serve`` spells out the environment variable too) or there is no default to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings:
            return text
        if action.default in (None, False, True, argparse.SUPPRESS) or action.default == []:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage and a one-line error instead of the whole usage block,
    and every option's default in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

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
            "unused (Redis expiry events). Needs --redis-url or SIDECAR_REDIS_URL, or --embedded "
            "for a private Valkey. HTTP is served at once; Redis is connected in the background. "
            "Stops cleanly (exit 0) on SIGTERM or SIGINT."
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
        default=_env("SIDECAR_CONNECT_TIMEOUT", "2"),
        help="how long one connection attempt or command to Redis may take; failed attempts "
        "are retried with backoff, never fatal (env SIDECAR_CONNECT_TIMEOUT, default 2)",
    )
    p.add_argument(
        "--watcher-slots",
        type=bounded(int, "a number of slots", 1, 64),
        metavar="K",
        default=_env("SIDECAR_WATCHER_SLOTS", "2"),
        help="how many sidecars per Redis count expiries (the others stand by and take over "
        "within seconds); counts stay exact whatever K, each event being claimed once "
        "(env SIDECAR_WATCHER_SLOTS, default 2)",
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
    """--budget-ms (the library's setting: flag, SIDECAR_BUDGET_MS, default) and --slo."""
    from sidecar.ops.rules import DEFAULT_SLO

    p.add_argument(
        "--budget-ms",
        type=positive,
        metavar="MS",
        default=None,  # resolved by library_config(), so SIDECAR_BUDGET_MS counts
        help=budget_help("overhead budget of one checkpoint call in ms, a histogram bucket edge"),
    )
    p.add_argument(
        "--slo",
        type=ratio,
        default=DEFAULT_SLO,
        help="share of calls within budget",
    )


def _add_dashboards(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "dashboards",
        help="write the Grafana dashboards (JSON) and optionally render an overview PNG",
        description="Generate the Grafana dashboards from the metric names in sidecar.names.",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="dashboards",
        help="output directory; - writes JSON to standard output (the dashboard chosen with "
        "--only, else an object of every dashboard by name)",
    )
    p.add_argument(
        "--only",
        metavar="NAME",
        help="write only this dashboard: checkpoint-overview or checkpoint-sidecar-health "
        "(default: both)",
    )
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
    from sidecar.ops.k8s import DEFAULT_NAME  # light: no YAML until something is written
    from sidecar.ops.rules import RUNBOOK_URL

    p = sub.add_parser(
        "alerts",
        help="write the Prometheus alerting and recording rules (YAML)",
        description="Generate the Prometheus rules from the metric names in sidecar.names.",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help=f"output file, - for standard output (default: {RULES_OUT}; with --format "
        f"prometheusrule {PROMETHEUS_RULE_OUT})",
    )
    p.add_argument(
        "--format",
        choices=("rules", "prometheusrule"),
        default="rules",
        help="rules: a Prometheus rule file; prometheusrule: the same groups in a Prometheus "
        "Operator PrometheusRule resource (kube-prometheus-stack)",
    )
    p.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help="--format prometheusrule: the resource's name",
    )
    p.add_argument(
        "--namespace",
        help="--format prometheusrule: the resource's namespace (default: none, kubectl -n "
        "chooses)",
    )
    p.add_argument(
        "--label",
        metavar="KEY=VALUE",
        action="append",
        type=_label,
        default=[],
        help="--format prometheusrule: a label to add, e.g. release=kube-prometheus-stack "
        "(the label your Prometheus' ruleSelector wants); repeatable",
    )
    _add_budget_and_slo(p)
    p.add_argument(
        "--runbook-url",
        metavar="URL",
        default=RUNBOOK_URL,  # sidecar.ops.rules' own: one default for CLI, module and tests
        help="where your operators read docs/runbooks.md; each alert links to its heading",
    )
    p.set_defaults(handler=_run_alerts, parser=p)


RULES_OUT = "alerts/checkpoint-rules.yml"
PROMETHEUS_RULE_OUT = "deploy/prometheus-operator/prometheusrule.yaml"


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


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


def _budget_ms(command: str, args: argparse.Namespace) -> float | None:
    """The budget from --budget-ms, else SIDECAR_BUDGET_MS, else the library's default."""
    try:
        return library_config(budget_ms=args.budget_ms).budget_ms
    except ValueError as exc:
        _fail(command, str(exc))
        return None


def _to_stdout(write: Callable[[pathlib.Path], object], name: str) -> None:
    """Let ``write`` generate into a temporary directory and copy the result to stdout: the
    generators stay the only code that shapes the output."""
    with tempfile.TemporaryDirectory(prefix="checkpoint-sidecar-") as tmp:
        target = pathlib.Path(tmp) / name
        write(target)
        sys.stdout.write(target.read_text(encoding="utf-8"))


def _run_dashboards(args: argparse.Namespace) -> int:
    generate = _ops("dashboards", "generate_dashboards")
    if generate is None:
        return USAGE_ERROR
    budget_ms = _budget_ms("dashboards", args)
    if budget_ms is None:
        return 1
    try:
        _write_dashboards(generate, args, budget_ms)
        if args.render:
            render = _ops("dashboards", "render_overview_png")
            if render is None:
                return USAGE_ERROR
            try:
                render(args.prometheus_url, args.render, window_s=args.render_window)
            except OSError as exc:
                return _fail("dashboards", f"cannot render from {args.prometheus_url}: {exc}")
    except ImportError as exc:
        return _fail("dashboards", f"{exc}: install 'checkpoint-sidecar[dashboards]'")
    except (OSError, ValueError) as exc:
        return _fail("dashboards", str(exc))
    if args.out != "-":
        print(
            f"dashboards written to {args.out}"
            + (f", overview in {args.render}" if args.render else "")
        )
    return 0


def _write_dashboards(
    generate: Callable[..., object], args: argparse.Namespace, budget_ms: float
) -> None:
    """Generate into a directory (a temporary one for ``--out -``), keep ``--only``'s."""
    import json

    def write(out_dir: pathlib.Path) -> dict[str, pathlib.Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = generate(out_dir, budget_ms=budget_ms, slo=args.slo)
        paths = {pathlib.Path(p).stem: pathlib.Path(p) for p in written}  # type: ignore[attr-defined]
        if args.only is None:
            return paths
        if args.only not in paths:
            raise ValueError(f"no dashboard {args.only!r}; choose one of {', '.join(paths)}")
        for stem, path in paths.items():
            if stem != args.only:
                path.unlink()
        return {args.only: paths[args.only]}

    if args.out != "-":
        write(pathlib.Path(args.out))
        return
    with tempfile.TemporaryDirectory(prefix="checkpoint-sidecar-") as tmp:
        found = {
            stem: json.loads(path.read_text("utf-8"))
            for stem, path in write(pathlib.Path(tmp)).items()
        }
    document = found[args.only] if args.only else found
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _run_alerts(args: argparse.Namespace) -> int:
    generate = _ops("alerts", "generate_rules")
    if generate is None:
        return USAGE_ERROR
    budget_ms = _budget_ms("alerts", args)
    if budget_ms is None:
        return 1
    prometheus_rule = args.format == "prometheusrule"
    out = args.out or (PROMETHEUS_RULE_OUT if prometheus_rule else RULES_OUT)
    try:
        if prometheus_rule:
            _write_prometheus_rule(args, out, budget_ms)
        else:

            def write(path: pathlib.Path) -> object:
                return generate(
                    path, budget_ms=budget_ms, slo=args.slo, runbook_url=args.runbook_url
                )

            if out == "-":
                _to_stdout(write, "rules.yml")
            else:
                write(pathlib.Path(out))
    except ImportError as exc:
        return _fail("alerts", f"{exc}: install 'checkpoint-sidecar[server]'")
    except (OSError, ValueError) as exc:
        return _fail("alerts", str(exc))
    if out != "-":
        print(f"rules written to {out}")
    return 0


def _write_prometheus_rule(args: argparse.Namespace, out: str, budget_ms: float) -> None:
    from sidecar.ops.k8s import prometheus_rule, write_prometheus_rule

    resource = prometheus_rule(
        budget_ms,
        args.slo,
        args.runbook_url,
        name=args.name,
        namespace=args.namespace,
        labels=dict(args.label),
    )
    write_prometheus_rule(out, resource)


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
