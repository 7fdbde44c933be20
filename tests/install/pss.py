"""The Kubernetes "restricted" Pod Security Standard, checked on a pod spec.

The rules of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline +
restricted, as of 1.29), plus this project's own: a read-only root filesystem on every
container. Returns one line per violation, so a test can show what is wrong.
"""

from __future__ import annotations

from typing import Any

from .manifests import containers

# Volume types the restricted profile allows.
_ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
_SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    found: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(f"pod: {key} is true")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']}: type {sorted(kinds)} not allowed")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    for c in containers(spec):
        found.extend(_container_violations(c, pod_sc))
    return found


def _container_violations(c: dict[str, Any], pod_sc: dict[str, Any]) -> list[str]:
    name = c["name"]
    sc = c.get("securityContext") or {}
    found: list[str] = []
    if sc.get("privileged"):
        found.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        found.append(f"{name}: allowPrivilegeEscalation must be false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        found.append(f"{name}: capabilities must drop ALL")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        found.append(f"{name}: capabilities.add beyond NET_BIND_SERVICE")
    if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        found.append(f"{name}: runAsNonRoot must be true")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        found.append(f"{name}: runAsUser 0")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in _SECCOMP_OK:
        found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
    if sc.get("readOnlyRootFilesystem") is not True:
        found.append(f"{name}: readOnlyRootFilesystem must be true")
    for port in c.get("ports", []):
        if port.get("hostPort"):
            found.append(f"{name}: hostPort {port['hostPort']}")
    return found
