"""Checkpoint overview, in grafanalib's ``generate-dashboard`` convention (a ``dashboard`` global).

The panels are defined in ``sidecar/ops/overview.py`` so that an installed
``checkpoint-sidecar`` can regenerate them for any budget. The committed
``checkpoint-overview.json`` is this dashboard for the default budget (``CheckpointConfig``'s
``budget_ms``), normalised to Grafana's current schema: regenerate it with
``python -m sidecar.ops --out-dir .`` (plain ``generate-dashboard`` would write grafanalib's
old, un-normalised JSON).
"""

from sidecar.ops import overview
from sidecar.ops.rules import DEFAULT_BUDGET_MS, DEFAULT_SLO

dashboard = overview.build(DEFAULT_BUDGET_MS / 1000.0, DEFAULT_SLO)
