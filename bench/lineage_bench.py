"""Prediction lineage lookup latency with 1,000,000 stored predictions.

Starts what the lookup needs, on free ports with a temporary state directory (it runs beside
a developer's stack): MLflow with one registered version (a run with metrics, params and the
tags the pipeline writes), an ML Metadata store with that version's lineage (Examples with
the DVC md5 of the project's data -> Transform -> Trainer Model -> MlflowModelVersion, in a
pipeline_run context), and the gateway process. It bulk-loads 1,000,000 predictions (half of
them labelled) into the prediction store, then measures, interleaved in rounds:

- ``GET /predictions/{id}`` of random stored ids through the real gateway (HTTP keep-alive,
  one client, sequential): store read + chain assembly (per-version part cached, as in
  production after the first lookup of a version) + JSON + HTTP;
- the baseline in the same run: ``GET /routing`` on the same gateway (an in-memory answer:
  what HTTP, the middleware and FastAPI cost by themselves);
- in-process: the store read alone (``PredictionStore.get``) and the whole lookup without
  HTTP (``gateway.lineage.Lineage.get``);
- ``GET /predictions?model_version=&limit=50`` (the list), and the first lookup of a version
  (cache miss: MLflow + ML Metadata reads).

Model server, Redis and Kafka are not started: a lookup touches none of them.

    .venv/bin/python bench/lineage_bench.py [--rows 1000000] [--lookups 3000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from taxi_mlops import paths, security
from taxi_mlops.lineage.predictions import PredictionStore
from taxi_mlops.settings import Settings
from taxi_mlops.stack import services
from taxi_mlops.stack.process import Supervisor, free_port

FEATURES = {"trip_miles": 2.5, "fare": 9.75, "trip_seconds": 600, "trip_start_hour": 13, "trip_start_day": 4,
            "trip_start_month": 7, "pickup_community_area": 8, "dropoff_community_area": 32,
            "payment_type": "Credit Card", "company": "Taxi Affiliation Services", "company_known": 1,
            "area_avg_fare": 11.2, "area_big_tipper_rate": 0.31, "area_trip_count": 412.0,
            "company_avg_fare": 12.9, "company_big_tipper_rate": 0.28, "company_trip_count": 2210.0,
            "area_trips_15m": 0.0, "area_avg_fare_1h": 0.0, "area_tip_rate_1h": 0.0}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fmt(name: str, ms: list[float]) -> str:
    return (f"{name:<46} n={len(ms):>5}  p50 {pct(ms, 0.5):7.3f} ms  p99 {pct(ms, 0.99):7.3f} ms  "
            f"mean {statistics.fmean(ms):7.3f} ms")


# ---- fixtures: MLflow version, ML Metadata lineage, 1M predictions -----------------------------
def register_version(settings: Settings, md5: str) -> tuple[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri)
    exp = client.create_experiment("lineage-bench")
    run = client.create_run(exp)
    for key, value in {"eval_auc": 0.951, "eval_binary_accuracy": 0.895, "eval_brier_score": 0.0725}.items():
        client.log_metric(run.info.run_id, key, value)
    client.log_param(run.info.run_id, "train_steps", "1000")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(settings.model_name)
    mv = client.create_model_version(settings.model_name, source=f"runs:/{run.info.run_id}/model",
                                     run_id=run.info.run_id,
                                     tags={"dvc_data_version": md5, "model_family": "dnn",
                                           "tfx_model_uri": "/bench/Trainer/model/7"})
    client.set_registered_model_alias(settings.model_name, "champion", mv.version)
    return str(mv.version), run.info.run_id


def build_mlmd(settings: Settings, md5: str, run_id: str, version: str) -> None:
    """The pipeline's shape in ML Metadata: Examples -> Transform -> Trainer -> MlflowLogger."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    settings.mlmd_path.parent.mkdir(parents=True, exist_ok=True)
    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = str(settings.mlmd_path)
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)

    def artifact_type(name):
        return store.put_artifact_type(pb.ArtifactType(name=name))

    def artifact(type_id, uri, **props):
        a = pb.Artifact(type_id=type_id, uri=uri)
        for k, v in props.items():
            if isinstance(v, int):
                a.custom_properties[k].int_value = v
            else:
                a.custom_properties[k].string_value = str(v)
        return store.put_artifacts([a])[0]

    ctx_type = store.put_context_type(pb.ContextType(name="pipeline_run"))
    [ctx] = store.put_contexts([pb.Context(type_id=ctx_type, name="2026-01-01T00:00:00.000000")])
    steps = [("CsvExampleGen", [], ("Examples", "/bench/ExampleGen/examples/1",
                                    {"dvc_data_version": md5, "dvc_data_path": "data/chicago_taxi/data.csv"})),
             ("Transform", [0], ("TransformGraph", "/bench/Transform/transform_graph/4", {})),
             ("Trainer", [0, 1], ("Model", "/bench/Trainer/model/7", {})),
             ("MlflowLogger", [0, 2], ("MlflowModelVersion", f"models:/{settings.model_name}/{version}",
                                       {"run_id": run_id, "version": int(version)}))]
    made = []
    for exec_name, inputs, (type_name, uri, props) in steps:
        out = artifact(artifact_type(type_name), uri, **props)
        made.append(out)
        exec_type = store.put_execution_type(pb.ExecutionType(name=f"tfx.bench.{exec_name}"))
        [execution] = store.put_executions([pb.Execution(type_id=exec_type)])
        evs = [pb.Event(artifact_id=made[i], execution_id=execution, type=pb.Event.INPUT) for i in inputs]
        evs.append(pb.Event(artifact_id=out, execution_id=execution, type=pb.Event.OUTPUT))
        store.put_events(evs)
        store.put_attributions_and_associations(
            [pb.Attribution(artifact_id=out, context_id=ctx)],
            [pb.Association(execution_id=execution, context_id=ctx)])


def fill(settings: Settings, rows: int, version: str, batch: int = 50_000) -> list[str]:
    """``rows`` predictions (every second one labelled) in batches of one transaction each."""
    store = PredictionStore(settings.predictions_db)
    store.conn.execute("PRAGMA synchronous=OFF")  # a bulk load; the consumer keeps NORMAL
    store.conn.execute("PRAGMA cache_size=-262144")  # 256 MB: random keys touch every page
    start = datetime.now(timezone.utc) - timedelta(days=7)
    ids = []
    for first in range(0, rows, batch):
        preds, labels = [], []
        for i in range(first, min(rows, first + batch)):
            rid = uuid.uuid4().hex  # what the gateway makes: random, so inserts land all over the B-tree
            ids.append(rid)
            preds.append({"request_id": rid, "trip_id": f"trip-{i}", "features": FEATURES,
                          "model_name": settings.model_name, "model_version": version, "model_alias": "champion",
                          "tip_probability": random.random(), "latency_ms": 6.5,
                          "timestamp": start + timedelta(seconds=i * 0.6), "variant": "champion",
                          "policy": "single", "schema_version": 2})
            if i % 2 == 0:
                labels.append({"trip_id": f"trip-{i}", "big_tipper": random.random() < 0.3, "tips": 2.0,
                               "fare": 9.75, "event_time": start + timedelta(seconds=i * 0.6 + 900)})
        store.write(preds, labels)
    store.close()
    return ids


# ---- measurements ----------------------------------------------------------------------------------
def timed_http(client: httpx.Client, urls: list[str], expect: int = 200) -> list[float]:
    out = []
    for url in urls:
        t = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == expect, (url, r.status_code, r.text[:300])
    return out


def timed_calls(fn, args: list) -> list[float]:
    out = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=3000, help="per measured kind, over all rounds")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    import yaml

    md5 = yaml.safe_load((paths.PROJECT_ROOT / "data" / "chicago_taxi" / "data.csv.dvc").read_text())["outs"][0]["md5"]
    settings = Settings(state_dir=Path(tempfile.mkdtemp(prefix="taxi-lineage-bench-")),
                        mlflow_port=free_port(), gateway_port=free_port(), redis_port=free_port(),
                        model_server_port=free_port(), kafka_port=free_port(), request_timeout_s=2.0,
                        metrics_enabled=True)
    security.use_mlflow_credentials(settings)  # the registry calls in this process: MLflow's admin
    sup = Supervisor(settings)
    sup.start(services.mlflow_service(settings))
    services.ensure_mlflow_reader(settings)  # the lineage chain reads MLflow as the read-only user
    try:
        version, run_id = register_version(settings, md5)
        build_mlmd(settings, md5, run_id, version)
        t = time.perf_counter()
        ids = fill(settings, args.rows, version)
        fill_s = time.perf_counter() - t
        size_mb = sum(p.stat().st_size for p in settings.predictions_db.parent.iterdir()) / 1e6
        print(f"store: {args.rows:,} predictions ({args.rows // 2:,} labelled) loaded in {fill_s:.1f} s "
              f"({args.rows / fill_s:,.0f} rows/s), {size_mb:,.0f} MB")

        sup.start(services.gateway_service(settings))
        base = settings.gateway_url
        with httpx.Client(timeout=10) as client:
            t = time.perf_counter()
            first = client.get(f"{base}/predictions/{ids[0]}")
            cold_ms = (time.perf_counter() - t) * 1000
            chain = first.json()
            assert first.status_code == 200 and not chain["errors"], chain
            assert chain["data"]["dvc_data_version"] == md5 and len(chain["pipeline"]["artifacts"]) == 4
            timed_http(client, [f"{base}/predictions/{random.choice(ids)}" for _ in range(200)])  # warm-up
            timed_http(client, [f"{base}/routing"] * 200)

            from taxi_mlops.gateway.lineage import Lineage

            reader = PredictionStore(settings.predictions_db, readonly=True)
            lineage = Lineage(settings)
            lineage.get(ids[0])
            per_round = max(1, args.lookups // args.rounds)
            results = {"lookup": [], "baseline": [], "store": [], "inproc": [], "list": [], "miss": []}
            for _ in range(args.rounds):
                results["lookup"] += timed_http(client, [f"{base}/predictions/{random.choice(ids)}"
                                                         for _ in range(per_round)])
                results["baseline"] += timed_http(client, [f"{base}/routing"] * per_round)
                results["store"] += timed_calls(reader.get, [random.choice(ids) for _ in range(per_round)])
                results["inproc"] += timed_calls(lineage.get, [random.choice(ids) for _ in range(per_round)])
                results["list"] += timed_http(client, [f"{base}/predictions?model_version={version}&limit=50"]
                                              * max(1, per_round // 10))
                misses = [f"{base}/predictions/unknown-{i}" for i in range(max(1, per_round // 10))]
                results["miss"] += timed_http(client, misses, expect=404)
        print(f"first lookup of the version (cache miss: MLflow + ML Metadata): {cold_ms:.1f} ms")
        print(fmt("GET /predictions/{id} (gateway, HTTP)", results["lookup"]))
        print(fmt("  baseline: GET /routing (same gateway, HTTP)", results["baseline"]))
        print(fmt("  GET /predictions/{unknown id} -> 404", results["miss"]))
        print(fmt("  store read alone (in-process)", results["store"]))
        print(fmt("  lookup without HTTP (store + chain, in-process)", results["inproc"]))
        print(fmt("GET /predictions?model_version=&limit=50", results["list"]))
        overhead = pct(results["lookup"], 0.99) - pct(results["baseline"], 0.99)
        print(f"lookup p99 minus baseline p99: {overhead:+.3f} ms; goal p99 <= 50 ms: "
              f"{'met' if pct(results['lookup'], 0.99) <= 50 else 'NOT met'}")
    finally:
        sup.stop("gateway")
        sup.stop("mlflow")
        shutil.rmtree(settings.state_dir, ignore_errors=True)  # ~1 GB of store


if __name__ == "__main__":
    main()
