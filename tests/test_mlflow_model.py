"""Every registered version is a real MLflow Model (issue 9.3): pyfunc with a signature, an
input example, pinned requirements and a model card; it answers like the model server, and
``mlflow models serve`` serves it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from taxi_mlops.features import schema, tables
from taxi_mlops.registry import mlflow_model, models
from taxi_mlops.stack.process import free_port, wait_for


@pytest.fixture(scope="module")
def pyfunc(stack, champion):
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{stack.model_name}@champion")


@pytest.fixture(scope="module")
def rows(stack) -> pd.DataFrame:
    frame = tables.training_frame(tables.load_trips(stack.data_csv)).sample(100, random_state=2)
    inputs = [schema.model_inputs(r, r) for r in frame.to_dict("records")]
    return pd.DataFrame(inputs)[list(schema.SERVING_DTYPES)]


def test_champion_is_an_mlflow_model(stack, champion, pyfunc):
    meta = pyfunc.metadata
    assert [c.name for c in meta.get_input_schema().inputs] == list(schema.SERVING_DTYPES)
    assert [c.name for c in meta.get_output_schema().inputs] == ["tip_probability"]
    assert meta.saved_input_example_info is not None
    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/{stack.model_name}@champion")
    pins = open(requirements).read().split()
    assert set(pins) >= set(mlflow_model.pinned_requirements()), pins
    client = models.client(stack.mlflow_tracking_uri)
    card = client.download_artifacts(champion.run_id, "model_card.md")
    text = open(card).read()
    assert champion.tags["dvc_data_version"] in text and "Intended use" in text


def test_pyfunc_answers_like_the_model_server(stack, pyfunc, rows):
    ours = pyfunc.predict(rows)["tip_probability"].to_numpy()
    body = {"inputs": [{"name": n, "datatype": dt, "shape": [len(rows)], "data": rows[n].tolist()}
                       for n, dt in schema.SERVING_DTYPES.items()]}
    r = httpx.post(f"{stack.model_server_url}/v2/models/{stack.model_name}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    served = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
    assert len(ours) == 100 and np.abs(ours - served).max() <= 1e-6


def test_the_packed_and_flat_calls_answer_like_the_signature(pyfunc, rows):
    """The pyfunc's fast paths (``_packed_call``: one matrix per dtype; ``_flat_call``: the 20
    tensors in flat order) against TensorFlow's public keyword call."""
    import tensorflow as tf

    model = pyfunc.unwrap_python_model()
    assert model._packed is not None and model._flat is not None  # both traced on this TensorFlow
    columns = {n: rows[n].to_numpy() for n in schema.SERVING_DTYPES}
    columns["company"] = columns["company"].astype(str)
    columns["payment_type"] = columns["payment_type"].astype(str)
    packed = model.predict_columns(columns)
    model._packed, saved = None, model._packed
    try:
        flat = model.predict_columns(columns)
    finally:
        model._packed = saved
    tensors = {n: tf.constant(np.asarray(v), dtype=model._types[n]) for n, v in columns.items()}
    public = model._fn(**tensors)["tip_probability"].numpy().reshape(-1)
    assert len(packed) == 100 and np.abs(packed - public).max() <= 1e-7
    assert np.abs(flat - public).max() <= 1e-7
    assert packed.std() > 0  # 100 different trips, not one answer repeated


@pytest.mark.slow
def test_mlflow_models_serve_serves_it(stack, rows, tmp_path):
    port = free_port()
    # MLflow execs `uvicorn` by name: the venv's bin must be on PATH (as in an activated venv).
    env = {**os.environ, "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{stack.model_name}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ping():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None
        assert wait_for(ping, 180, 0.5) and proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        sample = rows.head(3)
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=30,
                       json={"dataframe_split": sample.to_dict(orient="split")})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert len(predictions) == 3 and all(0.0 <= p["tip_probability"] <= 1.0 for p in predictions)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)
