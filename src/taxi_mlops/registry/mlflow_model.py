"""Log a trained SavedModel as a real MLflow Model (pyfunc flavor), with a signature, an
input example, pinned requirements and a model card.

Called by the MlflowLogger in the TFX environment; importable there (no platform-only
imports). ``pyfunc_model.py`` is the model's code.
"""

from __future__ import annotations

import re
from pathlib import Path

from taxi_mlops import paths
from taxi_mlops.features import schema
from taxi_mlops.samples import SAMPLE_TRIPS

CODE = Path(__file__).with_name("pyfunc_model.py")
# float64 in the signature: a DataFrame of Python floats is float64, and MLflow refuses to
# narrow it; the model casts to float32 itself.
_MLFLOW_TYPES = {"FP32": "double", "INT64": "long", "BYTES": "string"}
# What serving needs, pinned to the platform lock (the environment that loads the model).
SERVING_REQUIREMENTS = ("mlflow", "tensorflow-cpu", "pandas", "numpy", "protobuf")

# Two of the CLI's sample trips (a card loop, a cash airport run) as the input example.
EXAMPLE_TRIPS = SAMPLE_TRIPS[:2]


def input_types() -> dict[str, str]:
    return {name: _MLFLOW_TYPES[dt] for name, dt in schema.SERVING_DTYPES.items()}


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(t, n) for n, t in input_types().items()]),
                          outputs=Schema([ColSpec("float", "tip_probability")]))


def input_example():
    import pandas as pd

    rows = [schema.model_inputs(t, {n: 0.0 for n in schema.STORE_FEATURES}) for t in EXAMPLE_TRIPS]
    frame = pd.DataFrame(rows)[list(schema.SERVING_DTYPES)]
    for name, dt in schema.SERVING_DTYPES.items():
        frame[name] = frame[name].astype({"FP32": "float64", "INT64": "int64", "BYTES": object}[dt])
    return frame


def pinned_requirements(lock: Path = paths.PROJECT_ROOT / "requirements" / "platform.lock") -> list[str]:
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    missing = [p for p in SERVING_REQUIREMENTS if p not in pins]
    if missing:
        raise ValueError(f"{lock} pins none of {missing}: add them to the lock")
    return [f"{p}=={pins[p]}" for p in SERVING_REQUIREMENTS]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4f}"
    return str(value)


# What each pipeline model family is (pipeline.FAMILIES holds their hyper-parameters).
FAMILY_DESCRIPTIONS = {
    "dnn": "Keras DNN (two ReLU hidden layers) on the TFT-transformed features.",
    "linear": "logistic regression (no hidden layer) on the same TFT-transformed features.",
}


def model_card(name: str, data_version: str, metrics: dict[str, float], slices: dict | None = None,
               family: str | None = None) -> str:
    """``family`` (optional: cards written before families omit it) says which model this is,
    since versions of different families share the registered model's name."""
    lines = [f"# Model card: {name}", ""]
    if family:
        lines += ["## Model", f"Model family `{family}`: "
                  f"{FAMILY_DESCRIPTIONS.get(family, 'see the run parameters.')}", ""]
    lines += ["## Intended use",
              "Predicts whether a Chicago taxi trip's tip exceeds 20% of its fare (`big_tipper`), "
              "from the trip as known at its start plus the pickup area's and the company's "
              "history (Feast). For ranking and monitoring demos on the public Chicago Taxi sample; "
              "not for decisions about drivers or riders.", "",
              "## Data",
              f"DVC data version (md5) `{data_version}`: the 15,002-trip TFX Chicago Taxi sample, "
              "2013-2016, split train/eval by TFX ExampleGen.", "",
              "## Metrics (eval split)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k.removeprefix('eval_')} | {v:.4f} |" for k, v in sorted(metrics.items())]
    if slices:
        columns = list(dict.fromkeys(m for ms in slices.values() for m in ms))
        lines += ["", "## Metrics by slice (eval split)", "",
                  "Every slice, whatever its size. `gate`: the per-slice AUC bar applies to "
                  "slices with enough trips of each class (pass / fail), `-` where it does not.",
                  "", "| slice | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        lines += [f"| {s} | " + " | ".join(_cell(ms.get(m)) for m in columns) + " |"
                  for s, ms in slices.items()]
    lines += ["", "## Limits",
              "- Cash tips are not recorded in the data: cash trips are predicted as non-tippers.",
              "- Companies or areas with no history get the global averages (a prior), not their own.",
              "- Trained on 2013-2016 trips; fares and tipping habits drift.", ""]
    return "\n".join(lines)


def log(serving_dir: str, name: str = "model"):
    """Log the SavedModel at ``serving_dir`` as an MLflow Model in the active run."""
    import mlflow

    return mlflow.pyfunc.log_model(
        name=name, python_model=str(CODE), artifacts={"saved_model": serving_dir},
        signature=signature(), input_example=input_example(),
        pip_requirements=pinned_requirements(), model_config={"input_types": input_types()},
    )
