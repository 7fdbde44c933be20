"""Checkpoint sidecar health, in grafanalib's ``generate-dashboard`` convention.

Defined in ``sidecar/ops/health.py``; the committed ``checkpoint-sidecar-health.json`` is its
normalised output: regenerate it with ``python -m sidecar.ops --out-dir .``.
"""

from sidecar.ops import health

dashboard = health.build()
