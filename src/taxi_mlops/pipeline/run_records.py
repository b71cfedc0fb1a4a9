"""What earlier pipeline runs produced, so a run with nothing changed is not run again.

Platform side (no TFX import). A run's *fingerprint* covers everything that decides what
the pipeline trains: the bytes of the pipeline's input CSV (the DVC data joined with its
point-in-time features), the code the pipeline and trainer module run (``CODE``: stricter
than TFX's own cache key, which sees the module file's folder only), the pipeline venv's
lock file, and every config value but the champion and the Beam runner (family, steps,
epochs, URIs, ...).

The champion is the other half of the key: the Evaluator's verdict holds for one
(candidate, champion) pair. A record (``<pipeline_root>/run_records/<fingerprint>.json``)
keeps the candidate model and one evaluation per champion version it was compared with
(``NO_BASELINE`` when there was none). A run may be skipped when its evaluation is known:

- the champion is the candidate itself (a rerun after the model became champion): a model
  never regresses against itself and its absolute bars were checked when it was registered;
- or this candidate was already evaluated against this very champion.

Anything else (new data, changed code or config, another champion) runs the pipeline, where
TFX's cache still reuses every component whose inputs did not change.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from taxi_mlops import paths
from taxi_mlops.pipeline import runners

NO_BASELINE = "none"
# pipeline.py adds it, before the Evaluator, when there is a champion to compare with.
IMPORTER = "ChampionModelImporter"
# Config keys that name the champion: they are the pair's second half, not the fingerprint.
BASELINE_KEYS = ("baseline_model_uri", "baseline_version")
# Config keys that say where the Beam steps run (in-process, worker processes, Dask, a
# portable runner): the same inputs train the same model on any runner, so a rerun on another
# runner is answered from the record. (TFX's own cache key does include each Beam step's
# args: a run that does launch re-executes the Beam steps after a runner change.)
RUNNER_KEYS = runners.CONFIG_KEYS
# Source the pipeline runs (its components, the trainer module and the schema it imports,
# how a version is logged to MLflow) plus the TFX venv's pins: a change re-runs the pipeline.
CODE = (
    paths.PACKAGE_DIR / "pipeline",
    paths.PACKAGE_DIR / "features",
    paths.PACKAGE_DIR / "registry" / "mlflow_model.py",
    paths.PACKAGE_DIR / "registry" / "pyfunc_model.py",
    paths.PIPELINE_LOCK,
)
# Platform-side modules that only decide whether to launch the pipeline: editing them
# does not change what the pipeline would produce.
NOT_CODE = ("launcher.py", "run_records.py", "metrics.py", "runners.py", "kfp.py", "kfp_compile.py")


@dataclass
class Evaluation:
    """The verdict on the candidate against one champion (or none)."""

    run_id: str  # the MLflow run MlflowLogger logged
    version: int  # registered version, 0 when not blessed
    blessed: bool
    eval_metrics: dict = field(default_factory=dict)
    at: float = 0.0


@dataclass
class Record:
    fingerprint: str
    model_uri: str  # the Trainer's Model artifact (the candidate)
    family: str
    data_version: str
    components: list = field(default_factory=list)
    evaluations: dict = field(default_factory=dict)  # baseline version or NO_BASELINE -> Evaluation


@dataclass
class Reuse:
    """A run that need not happen: which record, which evaluation, and why."""

    record: Record
    evaluation: Evaluation
    reason: str

    def summary(self) -> dict:
        e = self.evaluation
        return {"fingerprint": self.record.fingerprint, "model_uri": self.record.model_uri,
                "version": e.version, "run_id": e.run_id, "blessed": e.blessed,
                "reason": self.reason}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_files(roots: Iterable[Path] = CODE) -> list[Path]:
    """Every source file under ``roots`` (Python, Feast/YAML config, lock files), sorted."""
    files = []
    for root in roots:
        candidates = [root] if root.is_file() else root.rglob("*")
        files += [p for p in candidates if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix in (".py", ".yaml", ".lock", "") and p.name not in NOT_CODE
                  and not p.name.endswith("_test.py")]
    return sorted(files)


def code_hash(roots: Iterable[Path] = CODE) -> str:
    h = hashlib.sha256()
    for path in code_files(roots):
        h.update(str(path.relative_to(paths.PROJECT_ROOT)).encode())
        h.update(_file_digest(path).encode())
    return h.hexdigest()


def fingerprint(input_csv: Path, config: Mapping, code: str) -> str:
    """The run's identity apart from the champion (see the module docstring)."""
    settings = {k: v for k, v in sorted(config.items())
                if k not in BASELINE_KEYS and k not in RUNNER_KEYS}
    doc = {"input": _file_digest(input_csv), "code": code, "config": settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def baseline_key(baseline_version: str | None) -> str:
    return str(baseline_version) if baseline_version else NO_BASELINE


def _path(pipeline_root: Path, fp: str) -> Path:
    return pipeline_root / "run_records" / f"{fp}.json"


def load(pipeline_root: Path, fp: str) -> Record | None:
    try:
        raw = json.loads(_path(pipeline_root, fp).read_text())
    except (OSError, ValueError):
        return None
    raw["evaluations"] = {k: Evaluation(**v) for k, v in raw.get("evaluations", {}).items()}
    return Record(**raw)


def save(pipeline_root: Path, record: Record) -> Path:
    """Written whole to a temporary file and renamed: a reader never sees half a record."""
    path = _path(pipeline_root, record.fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def remember(pipeline_root: Path, fp: str, *, model_uri: str, family: str, data_version: str,
             components: list, baseline_version: str | None, evaluation: Evaluation) -> Record:
    """Add one (candidate, champion) verdict; a different candidate (TFX trained again, e.g.
    its metadata was wiped) replaces the record's older evaluations."""
    record = load(pipeline_root, fp)
    if record is None or record.model_uri != model_uri:
        record = Record(fingerprint=fp, model_uri=model_uri, family=family,
                        data_version=data_version)
    record.components = dag(components, with_baseline=False)
    evaluation.at = evaluation.at or time.time()
    record.evaluations[baseline_key(baseline_version)] = evaluation
    save(pipeline_root, record)
    return record


def dag(components: Iterable[str], with_baseline: bool) -> list[str]:
    """The pipeline's component ids for a run with or without a champion to compare with:
    a record keeps one list, a run reports the DAG its own config would have had."""
    out = [c for c in components if c != IMPORTER]
    if with_baseline:
        at = out.index("Evaluator") if "Evaluator" in out else len(out)
        out.insert(at, IMPORTER)
    return out


def decide(record: Record | None, champion_version: str | None, champion_model_uri: str | None,
           baseline_version: str | None, registered_uris: Mapping[int, str]) -> Reuse | None:
    """Whether ``record`` already answers this run, given the registry as it is now.

    ``champion_*``: the version holding the champion alias and its TFX model folder (None:
    no champion); ``baseline_version``: the champion the Evaluator would compare with (None
    when it cannot, e.g. the champion's folder is not on this machine); ``registered_uris``:
    registered version -> its ``tfx_model_uri`` tag. A verdict that registered a version is
    only reused while that version is still in the registry for this very model.
    """
    if record is None or not Path(record.model_uri).exists():
        return None

    def still_registered(e: Evaluation) -> bool:
        return not e.version or registered_uris.get(e.version) == record.model_uri

    if champion_version and champion_model_uri == record.model_uri:
        registered = [e for e in record.evaluations.values()
                      if e.version and str(e.version) == str(champion_version)]
        if registered and still_registered(registered[-1]):
            return Reuse(record, registered[-1],
                         f"nothing changed: the model is version {champion_version}, the champion")
    evaluation = record.evaluations.get(baseline_key(baseline_version))
    if evaluation is not None and still_registered(evaluation):
        against = f"champion version {baseline_version}" if baseline_version else "no champion"
        what = (f"version {evaluation.version}" if evaluation.version
                else f"not blessed (run {evaluation.run_id})")
        return Reuse(record, evaluation,
                     f"nothing changed: the model was already evaluated against {against}: {what}")
    return None
