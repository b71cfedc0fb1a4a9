"""The MLflow model registry as the platform uses it: versions addressed by alias.

Clients pass a tracking URI and never care which backend store is behind the server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

# MLflow's client retries for minutes by default; a platform call must fail fast and say so.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    alias: str
    source: str
    run_id: str
    tags: dict

    @property
    def tfx_model_uri(self) -> str | None:
        return self.tags.get("tfx_model_uri")


def client(tracking_uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def by_alias(tracking_uri: str, name: str, alias: str) -> ModelRef | None:
    """The version holding ``alias``, or None when the model or alias does not exist."""
    try:
        mv = client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryUnavailable(f"MLflow at {tracking_uri} did not answer: {exc.message[:200]}. "
                                  "Is the stack up? `taxi-mlops up`") from exc
    return ModelRef(name=name, version=str(mv.version), alias=alias, source=mv.source,
                    run_id=mv.run_id or "", tags=dict(mv.tags or {}))


def download(tracking_uri: str, ref: ModelRef, dst: Path) -> Path:
    """Fetch the version's SavedModel folder; returns the local path."""
    client(tracking_uri)
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(dst)))


def load_pyfunc(tracking_uri: str, ref: ModelRef, dst: Path):
    """The version's MLflow Model, loaded as ``mlflow.pyfunc.load_model`` does (the one loading
    path: the model server, batch scoring and ``mlflow models serve`` all go through it);
    returns our ``TaxiTipPyfunc``, whose ``predict_columns`` skips the DataFrame for speed."""
    client(tracking_uri)
    dst.mkdir(parents=True, exist_ok=True)
    model = mlflow.pyfunc.load_model(f"models:/{ref.name}/{ref.version}", dst_path=str(dst))
    return model.unwrap_python_model()


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as the model server's repository sees it."""

    version: str
    aliases: tuple[str, ...]
    source: str
    run_id: str
    tags: dict


def versions(tracking_uri: str, name: str) -> dict[str, VersionInfo]:
    """Every version of ``name`` with its aliases and tags (the model server polls this);
    ``{}`` when the model is not registered yet. The aliases come from the registered model:
    ``search_model_versions`` leaves ``ModelVersion.aliases`` empty on the SQL store."""
    try:
        c = client(tracking_uri)
        by_alias = dict(c.get_registered_model(name).aliases or {})
        found = c.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return {}
        raise RegistryUnavailable(f"MLflow at {tracking_uri} did not answer: {exc.message[:200]}. "
                                  "Is the stack up? `taxi-mlops up`") from exc
    held: dict[str, list[str]] = {}
    for alias, version in sorted(by_alias.items()):
        held.setdefault(str(version), []).append(alias)
    return {str(mv.version): VersionInfo(version=str(mv.version),
                                         aliases=tuple(sorted(set(held.get(str(mv.version), []))
                                                              | set(mv.aliases or ()))),
                                         source=mv.source, run_id=mv.run_id or "",
                                         tags=dict(mv.tags or {}))
            for mv in found}


def aliases(tracking_uri: str, name: str) -> dict[str, str]:
    """alias -> version number for every alias of ``name``."""
    return {alias: info.version for info in versions(tracking_uri, name).values()
            for alias in info.aliases}
