"""The PrometheusRule is the rule file in a resource: generated, committed, and kept equal."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from sidecar.ops.k8s import prometheus_rule, render_prometheus_rule

from .manifests import OPERATOR, ROOT, by_kind, render

COMMITTED = OPERATOR / "prometheusrule.yaml"
RULE_FILE = ROOT / "alerts" / "checkpoint-rules.yml"
DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)


def test_the_committed_prometheus_rule_is_the_generated_one() -> None:
    # Regenerate: checkpoint-sidecar alerts --format prometheusrule
    assert COMMITTED.read_text("utf-8") == render_prometheus_rule(prometheus_rule())


def test_its_rules_are_the_rule_file_s_rules() -> None:
    resource = by_kind(render(OPERATOR), "PrometheusRule")
    assert resource["spec"] == yaml.safe_load(RULE_FILE.read_text("utf-8"))


def test_the_resources_have_the_shape_the_operator_accepts() -> None:
    """A structural check in the suite; tests/install/validate_crds.py validates both against
    the operator's CRD schemas in CI (it needs its own virtualenv)."""
    docs = render(OPERATOR)
    assert {d["kind"] for d in docs} == {"PodMonitor", "PrometheusRule"}
    for doc in docs:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    rule = by_kind(docs, "PrometheusRule")
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        for r in group["rules"]:
            assert ("record" in r) != ("alert" in r), r
            assert isinstance(r["expr"], str) and r["expr"]
            assert set(r) <= {
                "record",
                "alert",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            }
            assert DURATION.match(r.get("for", "0")), r
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in r.get(key, {}).values())


def test_labels_name_and_namespace_reach_the_resource(tmp_path: Path) -> None:
    resource = prometheus_rule(
        250, 0.995, name="ckpt", namespace="agents", labels={"release": "kps"}
    )
    assert resource["metadata"] == {
        "name": "ckpt",
        "namespace": "agents",
        "labels": {"app.kubernetes.io/name": "checkpoint-sidecar", "release": "kps"},
    }
    text = yaml.safe_dump(resource["spec"])
    assert 'le="0.25"' in text
