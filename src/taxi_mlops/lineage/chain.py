"""The full chain of one stored prediction: model version -> MLflow run -> ML Metadata
artifacts of the pipeline run -> DVC data version and the command that restores it -> label.

Everything behind a model version is immutable (a run's metrics, the artifacts, the data), so
that part is built once per version and cached; only the version's aliases move, and they are
reread at most every ``ALIAS_TTL_S`` (one registry call for all versions). A lookup is then one
SQLite read plus dictionary work.

MLflow is read over its REST API with ``httpx`` and a timeout (MLflow's client retries for
minutes); ML Metadata is a local SQLite file opened read-only. A backend that is down or
unreadable leaves its part empty and adds an ``errors`` entry naming it: a partial chain, never
a failure. A partial part is cached for ``RETRY_S`` only, so a backend that comes back is used.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import httpx

from taxi_mlops import paths, security
from taxi_mlops.lineage import predictions as store_mod
from taxi_mlops.lineage import restore as restore_mod
from taxi_mlops.settings import Settings

log = logging.getLogger("taxi_mlops.lineage.chain")

ALIAS_TTL_S = 2.0
RETRY_S = 10.0


class MlflowError(RuntimeError):
    pass


def _kv(items) -> dict:
    return {i["key"]: i.get("value") for i in items or []}


class MlflowReader:
    """The three registry/tracking reads the chain needs, each with ``timeout_s``."""

    def __init__(self, tracking_uri: str, timeout_s: float, auth: httpx.Auth | None = None):
        self.uri, self.timeout_s, self.auth = tracking_uri.rstrip("/"), timeout_s, auth

    def _get(self, path: str, params: dict) -> dict:
        try:
            r = httpx.get(f"{self.uri}/api/2.0/mlflow/{path}", params=params, timeout=self.timeout_s,
                          auth=self.auth)
        except httpx.HTTPError as exc:
            raise MlflowError(f"mlflow: unreachable at {self.uri} ({type(exc).__name__}: {exc})") from None
        if r.status_code >= 400:
            raise MlflowError(f"mlflow: {path} answered {r.status_code} at {self.uri}: {r.text[:200]}")
        return r.json()

    def version(self, name: str, version: str) -> dict:
        return self._get("model-versions/get", {"name": name, "version": version})["model_version"]

    def run(self, run_id: str) -> dict:
        return self._get("runs/get", {"run_id": run_id})["run"]

    def aliases(self, name: str) -> dict[str, list[str]]:
        """version -> its aliases, for every version of ``name``."""
        model = self._get("registered-models/get", {"name": name})["registered_model"]
        out: dict[str, list[str]] = {}
        for a in model.get("aliases") or []:
            out.setdefault(str(a["version"]), []).append(a["alias"])
        return out


def mlmd_part(mlmd_path: Path, run_id: str, tfx_model_uri: str | None, version: str) -> dict:
    """``{"run_id", "pipeline", "artifacts", "examples"}`` from ML Metadata: the artifacts
    upstream of the MlflowLogger's output for this run (the Trainer's Model at
    ``tfx_model_uri`` when there is none), in order from the data to the model (by id: an
    artifact's inputs always exist before it)."""
    from taxi_mlops.lineage import mlmd

    store = mlmd.open_store(mlmd_path)
    start = _registered_artifact(store, run_id, version) or _model_artifact(store, tfx_model_uri)
    if start is None:
        raise LookupError(f"mlmd: no artifact for MLflow run {run_id} or model {tfx_model_uri} in {mlmd_path}")
    nodes = mlmd.upstream(store, start.id)
    contexts = _contexts(store, start.id)
    examples = next((n for n in nodes if n.type == "Examples" and "dvc_data_version" in n.properties), None)
    artifacts = [{"id": n.id, "type": n.type, "uri": n.uri, "produced_by": n.produced_by,
                  "properties": n.properties} for n in sorted(nodes, key=lambda n: n.id)]
    return {"run_id": contexts.get("pipeline_run", ""), "pipeline_name": contexts.get("pipeline", ""),
            "artifacts": artifacts, "examples": examples.properties if examples else None}


def _registered_artifact(store, run_id: str, version: str):
    """The newest ``MlflowModelVersion`` artifact of this run (and version, when recorded)."""
    try:
        candidates = store.get_artifacts_by_type("MlflowModelVersion")
    except Exception:
        return None
    from taxi_mlops.lineage.mlmd import _props

    matching = [a for a in candidates if _props(a).get("run_id") == run_id]
    exact = [a for a in matching if str(_props(a).get("version")) == str(version)]
    pool = exact or matching
    return max(pool, key=lambda a: a.id) if pool else None


def _model_artifact(store, uri: str | None):
    if not uri:
        return None
    found = [a for a in store.get_artifacts_by_uri(uri)] or \
        [a for a in store.get_artifacts_by_type("Model") if a.uri.rstrip("/") == uri.rstrip("/")]
    # A later run importing this model as its baseline makes a copy without upstream: the
    # Trainer's is the oldest.
    return min(found, key=lambda a: a.id) if found else None


def _contexts(store, artifact_id: int) -> dict[str, str]:
    """context type -> name for the artifact's contexts (TFX: pipeline, pipeline_run, node)."""
    types = {t.id: t.name for t in store.get_context_types()}
    return {types.get(c.type_id, str(c.type_id)): c.name for c in store.get_contexts_by_artifact(artifact_id)}


class ChainBuilder:
    """Builds ``PredictionChain`` dicts (gateway/lineage.py validates them); one per gateway
    worker, safe to call from its thread pool."""

    def __init__(self, settings: Settings, timeout_s: float | None = None):
        self.settings = settings
        self.mlflow = MlflowReader(settings.mlflow_tracking_uri, timeout_s or settings.request_timeout_s,
                                   auth=security.mlflow_http_auth(settings))  # reads: the reader
        self._versions: dict[tuple[str, str], tuple[float, dict]] = {}  # -> (expires, part)
        self._aliases: dict[str, tuple[float, dict | None, str | None]] = {}
        self._lock = threading.Lock()

    # ---- per version (cached) ---------------------------------------------------------------
    def version_part(self, name: str, version: str) -> dict:
        key = (name, version)
        now = time.monotonic()
        with self._lock:
            hit = self._versions.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        part = self._build_version(name, version)
        expires = float("inf") if not part["errors"] else now + RETRY_S
        with self._lock:
            self._versions[key] = (expires, part)
        return part

    def _build_version(self, name: str, version: str) -> dict:
        errors: list[str] = []
        model = {"name": name, "version": version, "family": None}
        run = {"run_id": None, "metrics": {}, "params": {}, "tags": {}, "url": None}
        tags: dict = {}
        try:
            mv = self.mlflow.version(name, version)
            tags = _kv(mv.get("tags"))
            model["family"] = tags.get("model_family")
            run["run_id"] = mv.get("run_id") or None
            if run["run_id"]:
                body = self.mlflow.run(run["run_id"])
                data = body.get("data") or {}
                run["metrics"] = {m["key"]: m["value"] for m in data.get("metrics") or []}
                run["params"], run["tags"] = _kv(data.get("params")), _kv(data.get("tags"))
                run["url"] = (f"{self.mlflow.uri}/#/experiments/{body['info']['experiment_id']}"
                              f"/runs/{run['run_id']}")
        except MlflowError as exc:
            errors.append(str(exc))
        except (KeyError, ValueError) as exc:
            errors.append(f"mlflow: unexpected answer for {name} version {version}: {exc}")
        pipeline = {"run_id": None, "pipeline_name": None, "artifacts": []}
        examples = None
        if run["run_id"] or tags.get("tfx_model_uri"):
            try:
                found = mlmd_part(self.settings.mlmd_path, run["run_id"] or "", tags.get("tfx_model_uri"), version)
                pipeline = {k: found[k] for k in ("run_id", "pipeline_name", "artifacts")}
                examples = found["examples"]
            except Exception as exc:  # a missing or unreadable store: say so, keep the rest
                errors.append(f"mlmd: {exc}" if not str(exc).startswith("mlmd:") else str(exc))
        data = self._data(tags.get("dvc_data_version") or (examples or {}).get("dvc_data_version"),
                          (examples or {}).get("dvc_data_path"), errors)
        if examples and tags.get("dvc_data_version") and \
                examples.get("dvc_data_version") != tags["dvc_data_version"]:
            errors.append(f"data: MLflow says {tags['dvc_data_version']}, ML Metadata says "
                          f"{examples.get('dvc_data_version')}")
        return {"model": model, "mlflow_run": run, "pipeline": pipeline, "data": data, "errors": errors}

    def _data(self, md5: str | None, path: str | None, errors: list[str]) -> dict:
        data = {"dvc_data_version": md5, "path": path, "restore_command": None, "remote": None}
        if not md5:
            errors.append("data: no DVC data version recorded for this model (MLflow tag dvc_data_version)")
            return data
        from taxi_mlops.retrain.data import data_dir

        candidates = []
        if path:
            p = Path(path)
            candidates.append((p if p.is_absolute() else paths.PROJECT_ROOT / p).parent)
        candidates += [self.settings.data_csv.parent, data_dir(self.settings)]
        try:
            found = restore_mod.restore(md5, candidates, Path(path).name if path else "data.csv")
        except ValueError as exc:
            errors.append(f"data: {exc}")
            return data
        if found is None:
            errors.append(f"data: md5 {md5} is in no known DVC remote (the project's and the retrain "
                          "repository's); was it pushed (`dvc push`)?")
            return data
        data["restore_command"], data["remote"] = found.command, found.remote
        return data

    # ---- aliases (move, so briefly cached) ------------------------------------------------
    def aliases(self, name: str, version: str) -> tuple[list[str], str | None]:
        now = time.monotonic()
        with self._lock:
            hit = self._aliases.get(name)
        if hit is None or hit[0] <= now:
            try:
                hit = (now + ALIAS_TTL_S, self.mlflow.aliases(name), None)
            except (MlflowError, KeyError, ValueError) as exc:
                hit = (now + ALIAS_TTL_S, None, str(exc))
            with self._lock:
                self._aliases[name] = hit
        _, table, error = hit
        return (sorted((table or {}).get(str(version), [])), error)

    # ---- one prediction ---------------------------------------------------------------------
    def build(self, stored: store_mod.Stored) -> dict:
        p = stored.prediction
        part = self.version_part(p["model_name"], str(p["model_version"]))
        aliases, alias_error = self.aliases(p["model_name"], str(p["model_version"]))
        errors = list(part["errors"])
        if alias_error and not any(e.startswith("mlflow:") for e in errors):
            errors.append(alias_error)
        return {"request_id": stored.request_id, "prediction": p,
                "model": {**part["model"], "aliases": aliases},
                "mlflow_run": part["mlflow_run"], "pipeline": part["pipeline"], "data": part["data"],
                "label": stored.label, "errors": errors}

