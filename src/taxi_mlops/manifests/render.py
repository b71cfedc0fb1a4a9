"""Write the generated tree: ``k8s/base``, ``k8s/overlays/{dev,prod}``, ``compose/compose.yaml``.

The files are committed (under ``deploy/``) so that ``kubectl apply -k deploy/k8s/overlays/dev``
and ``docker compose -f deploy/compose/compose.yaml`` work from a clone and a review shows
every change to them; ``tests/test_manifests.py`` fails when they differ from the generator.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from taxi_mlops.manifests import common, compose, kubernetes
from taxi_mlops.settings import Settings


def dump(docs: list[dict]) -> str:
    return common.HEADER + yaml.safe_dump_all(docs, sort_keys=False, width=120)


def tree(settings: Settings) -> dict[str, str]:
    """``{path relative to deploy/: text}`` of every generated file."""
    files = {f"k8s/base/{name}": dump(docs) for name, docs in kubernetes.base(settings).items()}
    files["k8s/base/kustomization.yaml"] = dump([kubernetes.kustomization_base()])
    for name in kubernetes.OVERLAYS:
        files[f"k8s/overlays/{name}/kustomization.yaml"] = dump([kubernetes.kustomization_overlay(name)])
    files["compose/compose.yaml"] = dump([compose.compose(settings)])
    files["compose/prometheus.yml"] = dump([compose.prometheus_config(settings)])
    files["compose/alertmanager.yml"] = dump([compose.alertmanager_config(settings)])
    return files


def render(settings: Settings, out: Path | None = None) -> list[Path]:
    """Write every generated file under ``out`` (default ``deploy/``); returns the paths."""
    out = out or common.DEPLOY_DIR
    written = []
    for rel, text in tree(settings).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


# Kinds kustomize's namespace transformer leaves alone (cluster-scoped) - none in our base.
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _containers(node):
    """Every ``containers``/``initContainers`` list item anywhere in a document (kustomize's
    images transformer updates them wherever they are, custom resources included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def resolve_overlay(settings: Settings, name: str) -> list[dict]:
    """The overlay's documents as kustomize builds them, for the subset our overlays use
    (common labels, namespace, images, replicas): ``kubectl apply -f`` without kustomize."""
    if name not in kubernetes.OVERLAYS:
        raise ValueError(f"unknown overlay {name!r}; choose one of {', '.join(kubernetes.OVERLAYS)}")
    spec = kubernetes.OVERLAYS[name]
    labels = kubernetes.kustomization_base()["labels"][0]["pairs"]
    replicas = {r["name"]: r["count"] for r in spec["replicas"]}
    docs = []
    for doc in (d for ds in kubernetes.base(settings).values() for d in ds):
        doc = copy.deepcopy(doc)
        doc["metadata"].setdefault("labels", {}).update(labels)
        if doc["kind"] not in _CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = spec["namespace"]
        for container in _containers(doc.get("spec", {})):
            for image in spec["images"]:
                repo, _, _tag = container["image"].partition(":")
                if repo == image["name"]:
                    container["image"] = f"{image.get('newName', repo)}:{image['newTag']}"
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] in replicas:
            doc["spec"]["replicas"] = replicas[doc["metadata"]["name"]]
        docs.append(doc)
    return docs
