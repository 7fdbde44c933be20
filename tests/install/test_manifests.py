"""deploy/: every manifest valid for Kubernetes 1.29 and the newest release, every container
within the restricted Pod Security Standard, and the pod wired the way the sidecar needs."""

from __future__ import annotations

import copy
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .manifests import (
    BASE,
    KUSTOMIZATIONS,
    OPERATOR,
    PRE_129,
    ROOT,
    SECRET,
    by_kind,
    container,
    containers,
    every_manifest,
    load_docs,
    pod_spec,
    render,
)
from .pss import restricted_violations

OLDEST = "1.29.0"  # native sidecars are GA-on-by-default from here
NEWEST = kubernetes_validate.latest_version()
CRD_KINDS = {"PodMonitor", "PrometheusRule"}  # validated by tests/install/validate_crds.py
SIDECAR, AGENT = "checkpoint-sidecar", "agent"
MULTIPROC = "/var/run/prom-multiproc"
# Measured (bench/throughput.py, 2026-12-02, with the fleet watcher and the HTTP API): the
# sidecar's RSS is 53 MiB when ready and 57 MiB after 10,000 expiries. The request must cover it
# with room to spare.
MEASURED_RSS_MIB = 57


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def _builtin_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for name, docs in every_manifest().items()
        for doc in docs
        if doc["kind"] not in CRD_KINDS
    ]


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    checked = _builtin_docs()
    assert {doc["kind"] for _, doc in checked} == {"Deployment", "Secret"}
    for where, doc in checked:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is not valid for Kubernetes {version}: {exc.message}")


def test_older_clusters_need_the_pre_1_29_variant_and_accept_it() -> None:
    """1.27 knows no native sidecars: the base is refused there, the overlay is valid."""
    base, old = by_kind(render(BASE), "Deployment"), by_kind(render(PRE_129), "Deployment")
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(base, "1.27.0", strict=True)
    kubernetes_validate.validate(old, "1.27.0", strict=True)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["spec", "template", "spec", "containers", 0, "securityContext", "readOnlyRootFS"], True),
        (["spec", "template", "spec", "initContainers", 0, "restartPolicy"], 3),
        (["spec", "replicas"], "two"),
    ],
)
def test_the_schema_check_refuses_a_broken_deployment(path: list[Any], value: Any) -> None:
    doc = copy.deepcopy(by_kind(render(BASE), "Deployment"))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, OLDEST, strict=True)


@pytest.mark.parametrize("variant", [BASE, PRE_129], ids=["native-sidecar", "pre-1.29"])
def test_every_container_passes_the_restricted_pod_security_standard(variant: Any) -> None:
    spec = pod_spec(render(variant))
    assert {c["name"] for c in containers(spec)} == {SIDECAR, AGENT}
    assert restricted_violations(spec) == []


def _set(c: dict[str, Any], key: str, value: Any) -> None:
    c.setdefault("securityContext", {})[key] = value


BREAKAGES = {
    "allowPrivilegeEscalation: true": lambda s: _set(
        s["containers"][0], "allowPrivilegeEscalation", True
    ),
    "privileged sidecar": lambda s: _set(s["initContainers"][0], "privileged", True),
    "capabilities not dropped": lambda s: _set(
        s["containers"][0], "capabilities", {"add": ["NET_ADMIN"]}
    ),
    "root user": lambda s: _set(s["initContainers"][0], "runAsUser", 0),
    "writable root filesystem": lambda s: _set(s["containers"][0], "readOnlyRootFilesystem", False),
    "no seccomp": lambda s: [
        s.pop("securityContext"),
        s["containers"][0]["securityContext"].pop("seccompProfile"),
    ],
    "hostPath volume": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "hostPID": lambda s: s.update(hostPID=True),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_policy_check_catches(breakage: str) -> None:
    spec = copy.deepcopy(pod_spec(render(BASE)))
    BREAKAGES[breakage](spec)
    assert restricted_violations(spec) != []


def test_the_sidecar_is_a_native_sidecar_and_the_old_variant_differs_only_there() -> None:
    new, old = pod_spec(render(BASE)), pod_spec(render(PRE_129))
    sidecar = new["initContainers"][0]
    assert sidecar["name"] == SIDECAR
    assert sidecar["restartPolicy"] == "Always"
    assert [c["name"] for c in old["containers"]] == [AGENT, SIDECAR]
    assert old.get("initContainers") in (None, [])
    old_sidecar = old["containers"][1]
    assert "restartPolicy" not in old_sidecar
    assert old_sidecar == {k: v for k, v in sidecar.items() if k != "restartPolicy"}
    rest = {k: v for k, v in new.items() if k not in ("initContainers", "containers")}
    assert rest == {k: v for k, v in old.items() if k not in ("initContainers", "containers")}


def test_probes_ports_and_process_namespace() -> None:
    spec = pod_spec(render(BASE))
    sidecar = container(spec, SIDECAR)
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"metrics": 9464, "api": 9465}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert "--host=0.0.0.0" in sidecar["args"] and "--port=9464" in sidecar["args"]
    # the sidecar reads agent pids to drop the gauges of dead processes
    assert spec["shareProcessNamespace"] is True
    assert spec["automountServiceAccountToken"] is False


def test_writable_paths_are_empty_dirs_shared_where_they_must_be() -> None:
    spec = pod_spec(render(BASE))
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in containers(spec):
        for mount in c["volumeMounts"]:
            volume = volumes[mount["name"]]
            if not mount.get("readOnly"):
                assert "emptyDir" in volume, f"{c['name']} writes to {mount['mountPath']}"
        paths = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "/tmp" in paths and "emptyDir" in volumes[paths["/tmp"]]
        assert paths[MULTIPROC] == "prom-multiproc"
    agent, sidecar = container(spec, AGENT), container(spec, SIDECAR)
    assert {"name": "PROMETHEUS_MULTIPROC_DIR", "value": MULTIPROC} in agent["env"]
    assert f"--multiproc-dir={MULTIPROC}" in sidecar["args"]


def _secret_key(c: dict[str, Any], env: str) -> tuple[str, str]:
    (entry,) = [e for e in c["env"] if e["name"] == env]
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_agent_and_sidecar_use_their_own_redis_users_from_a_secret_applied_on_its_own() -> None:
    spec = pod_spec(render(BASE))
    (secret,) = load_docs(SECRET)
    name = secret["metadata"]["name"]
    agent_ref = _secret_key(container(spec, AGENT), "SIDECAR_REDIS_URL")
    sidecar_ref = _secret_key(container(spec, SIDECAR), "SIDECAR_REDIS_URL")
    assert agent_ref == (name, "agent-url") and sidecar_ref == (name, "sidecar-url")
    data = secret["stringData"]
    assert data["agent-url"].split("@")[0] != data["sidecar-url"].split("@")[0]  # two users
    # the Secret is in no kustomization: `kubectl apply -k` never overwrites it
    for directory in KUSTOMIZATIONS:
        assert all(doc["kind"] != "Secret" for doc in render(directory))
    # the CA for rediss:// is mounted where both URLs point
    (ca,) = [v for v in spec["volumes"] if v["name"] == "redis-ca"]
    assert ca["secret"] == {
        "secretName": name, "items": [{"key": "ca.crt", "path": "ca.crt"}], "defaultMode": 0o444,
    }  # fmt: skip
    for c in containers(spec):
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "redis-ca"]
        ca_path = f"{mount['mountPath']}/ca.crt"
        assert mount["readOnly"] is True
    for url in (data["agent-url"], data["sidecar-url"]):
        assert url.startswith("rediss://") and f"ssl_ca_certs={ca_path}" in url
    assert "ca.crt" in data


def test_sidecar_resources_cover_the_measured_memory() -> None:
    sidecar = container(pod_spec(render(BASE)), SIDECAR)
    requests, limits = sidecar["resources"]["requests"], sidecar["resources"]["limits"]
    assert _mib(requests["memory"]) >= 1.2 * MEASURED_RSS_MIB
    assert _mib(limits["memory"]) >= 2 * MEASURED_RSS_MIB
    assert "cpu" in requests and "cpu" in limits


def test_the_pod_monitor_scrapes_the_sidecar_port_of_these_pods() -> None:
    monitor = by_kind(render(OPERATOR), "PodMonitor")
    template = by_kind(render(BASE), "Deployment")["spec"]["template"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= template["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # the plain Prometheus config keeps working for users without the operator
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9464"
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "scrape.yml").read_text("utf-8"))
    assert scrape["scrape_configs"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed here")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_this_rendering_agrees_with_kubectl_kustomize(directory: Any) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True,
        timeout=60,
    ).stdout  # fmt: skip
    real = [doc for doc in yaml.safe_load_all(out) if doc]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(real, key=key) == sorted(render(directory), key=key)


def test_the_sidecar_flags_in_the_manifests_and_the_image_are_real_flags() -> None:
    from sidecar.server.cli import build_parser

    sidecar = container(pod_spec(render(BASE)), SIDECAR)
    args = build_parser().parse_args(sidecar["args"])
    assert args.command == "serve"
    assert (args.host, args.port, args.multiproc_dir) == ("0.0.0.0", 9464, MULTIPROC)
    port = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["metrics"]
    assert port == args.port
    dockerfile = (ROOT / "Dockerfile").read_text("utf-8")
    (cmd,) = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    assert build_parser().parse_args(yaml.safe_load(cmd[4:])).command == "serve"
