"""Load the manifests under deploy/ the way ``kubectl apply -k`` would, without a cluster.

CI machines have no kubectl, so the kustomizations are rendered here: ``resources`` (files and
directories) and ``patches`` with an inline JSON 6902 patch and a target — all that deploy/
uses. Any other kustomization field raises, so a kustomization this cannot render faithfully
fails the tests instead of being half-read. Where kubectl exists, a test compares this
rendering with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
PRE_129 = KUBERNETES / "pre-1.29"
OPERATOR = DEPLOY / "prometheus-operator"
SECRET = KUBERNETES / "secret.example.yaml"
KUSTOMIZATIONS = (BASE, PRE_129, OPERATOR)

Doc = dict[str, Any]
_KNOWN = {"apiVersion", "kind", "resources", "patches"}


def load_docs(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _matches(doc: Doc, target: dict[str, str]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {
        "group": group,
        "version": version,
        "kind": doc["kind"],
        "name": doc["metadata"]["name"],
    }
    return all(wanted.get(key) == value for key, value in target.items())


def render(directory: Path) -> list[Doc]:
    """The resources ``kubectl kustomize directory`` would print (same content, any order)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text("utf-8"))
    unknown = set(kustomization) - _KNOWN
    if unknown:
        raise NotImplementedError(f"{directory}: cannot render {sorted(unknown)} here")
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    docs = copy.deepcopy(docs)
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load(patch["patch"])
        hits = [i for i, doc in enumerate(docs) if _matches(doc, patch["target"])]
        if not hits:
            raise ValueError(f"{directory}: patch target {patch['target']} matches nothing")
        for i in hits:
            docs[i] = jsonpatch.apply_patch(docs[i], operations)
    return docs


def by_kind(docs: list[Doc], kind: str) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    spec: Doc = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def containers(spec: Doc) -> list[Doc]:
    """Every container of a pod spec: init (native sidecars included), main, ephemeral."""
    return [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]


def container(spec: Doc, name: str) -> Doc:
    found = [c for c in containers(spec) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}"
    return found[0]


def every_manifest() -> dict[str, list[Doc]]:
    """Name -> documents: each kustomization rendered, and the Secret applied on its own."""
    rendered = {str(d.relative_to(ROOT)): render(d) for d in KUSTOMIZATIONS}
    rendered[str(SECRET.relative_to(ROOT))] = load_docs(SECRET)
    return rendered
