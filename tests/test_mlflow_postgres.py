"""MLflow on a PostgreSQL backend store: the same registry calls work, only the URI differs."""

import subprocess
from pathlib import Path

import mlflow
import pytest

from taxi_mlops import security
from taxi_mlops.registry import models
from taxi_mlops.settings import Settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import Supervisor, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres_uri(postgres):
    return postgres("mlflow")


def test_registry_aliases_on_postgres_backend(postgres_uri, tmp_path):
    settings = Settings(state_dir=tmp_path, mlflow_port=free_port(), mlflow_backend_uri=postgres_uri)
    sup = Supervisor(settings)
    sup.start(services.mlflow_service(settings))
    try:
        with security.mlflow_login(settings):  # this server's admin; the session's login after
            _registry_round_trip(settings, postgres_uri, tmp_path)
    finally:
        sup.stop("mlflow")


def _registry_round_trip(settings: Settings, postgres_uri: str, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment("pg-check")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "saved_model.pb").write_bytes(b"not a real model")
    with mlflow.start_run() as run:
        mlflow.log_metric("eval_auc", 0.9)
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    client = models.client(settings.mlflow_tracking_uri)
    client.create_registered_model("pg-model")
    version = client.create_model_version("pg-model", source=f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    client.set_registered_model_alias("pg-model", "champion", version.version)
    ref = models.by_alias(settings.mlflow_tracking_uri, "pg-model", "champion")
    assert ref is not None and ref.version == str(version.version)
    fetched = models.download(settings.mlflow_tracking_uri, ref, tmp_path / "download")
    assert (fetched / "saved_model.pb").read_bytes() == b"not a real model"
    assert models.by_alias(settings.mlflow_tracking_uri, "pg-model", "challenger") is None
    # the rows really are in PostgreSQL
    out = subprocess.run(["psql", postgres_uri, "-tAc",
                          "select count(*) from registered_model_aliases"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "1", out.stderr
    # ... and so are MLflow's users (basic-auth), beside the registry they guard
    out = subprocess.run(["psql", postgres_uri, "-tAc",
                          f"select is_admin from users where username = '{settings.mlflow_admin_username}'"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "t", out.stderr
    assert not list(settings.state_dir.rglob("basic_auth.db"))
