"""Validate deploy/prometheus-operator/*.yaml against the Prometheus Operator's CRD schemas.

The schemas come from the PyPI package ``cloudcoil-models-prometheus-operator`` (pydantic models
generated from the operator's CRDs, version = operator version). Its models ignore unknown
fields, so this takes each model's JSON schema and forbids additional properties everywhere,
then validates with jsonschema: types, enums, patterns (durations) and unknown fields all fail.

Run in a virtualenv of its own (CI: .ci/run), as ``python tests/install/validate_crds.py``;
``--self-test`` also checks that broken resources are refused.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from cloudcoil.models.prometheus_operator import v1

ROOT = Path(__file__).resolve().parents[2]
FILES = [
    ROOT / "deploy" / "prometheus-operator" / n for n in ("podmonitor.yaml", "prometheusrule.yaml")
]
MODELS = {"PodMonitor": v1.PodMonitor, "PrometheusRule": v1.PrometheusRule}


def _closed(node: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists properties."""
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


def validator(kind: str) -> jsonschema.protocols.Validator:
    schema = _closed(MODELS[kind].model_json_schema(by_alias=True, mode="validation"))
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def errors(doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(doc["kind"]).iter_errors(doc)
    ]


def _self_test(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    monitor = copy.deepcopy(next(d for d in docs if d["kind"] == "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    rule = copy.deepcopy(next(d for d in docs if d["kind"] == "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["exprr"] = "up"
    for broken in (monitor, rule):
        if not errors(broken):
            problems.append(f"a broken {broken['kind']} was accepted")
    return problems


def main(argv: list[str]) -> int:
    docs = [d for f in FILES for d in yaml.safe_load_all(f.read_text("utf-8")) if d]
    kinds = sorted(d["kind"] for d in docs)
    if kinds != ["PodMonitor", "PrometheusRule"]:
        print(f"expected a PodMonitor and a PrometheusRule, found {kinds}")
        return 1
    failed = 0
    for doc in docs:
        found = errors(doc)
        failed += bool(found)
        print(f"{doc['kind']}/{doc['metadata']['name']}: {'ok' if not found else 'INVALID'}")
        for line in found:
            print(f"  {line}")
    if "--self-test" in argv:
        problems = _self_test(docs)
        for line in problems:
            print(f"self-test: {line}")
        failed += len(problems)
        print(f"self-test: {'ok' if not problems else 'FAILED'} (broken resources are refused)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
