"""``python -m sidecar.ops``: regenerate dashboards/*.json and alerts/checkpoint-rules.yml.

Same as ``checkpoint-sidecar dashboards --out dashboards/`` plus ``checkpoint-sidecar alerts``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from sidecar.ops import generate_dashboards, generate_rules
from sidecar.ops.rules import DEFAULT_BUDGET_MS, DEFAULT_SLO, RUNBOOK_URL

RULES_PATH = pathlib.Path("alerts") / "checkpoint-rules.yml"
DASHBOARDS_DIR = pathlib.Path("dashboards")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.ops",
        description="Regenerate the Grafana dashboards and the Prometheus rules.",
    )
    parser.add_argument(
        "--out-dir",
        type=pathlib.Path,
        default=pathlib.Path("."),
        help="repository root: writes dashboards/ and alerts/ under it",
    )
    parser.add_argument(
        "--budget-ms",
        type=float,
        default=DEFAULT_BUDGET_MS,
        help=f"latency budget of one checkpoint call (default {DEFAULT_BUDGET_MS:g})",
    )
    parser.add_argument(
        "--slo",
        type=float,
        default=DEFAULT_SLO,
        help=f"share of operations within budget (default {DEFAULT_SLO})",
    )
    parser.add_argument(
        "--runbook-url",
        default=RUNBOOK_URL,
        help=f"where operators read docs/runbooks.md: alerts and alerting panels link to it"
        f" (default {RUNBOOK_URL})",
    )
    args = parser.parse_args(argv)
    if args.budget_ms <= 0 or not 0 < args.slo < 1:
        parser.exit(2, "error: --budget-ms must be > 0 and --slo between 0 and 1\n")
    written = generate_dashboards(
        args.out_dir / DASHBOARDS_DIR,
        budget_ms=args.budget_ms,
        slo=args.slo,
        runbook_url=args.runbook_url,
    )
    written.append(
        generate_rules(
            args.out_dir / RULES_PATH,
            budget_ms=args.budget_ms,
            slo=args.slo,
            runbook_url=args.runbook_url,
        )
    )
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
