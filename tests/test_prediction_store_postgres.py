"""The prediction store on PostgreSQL (``TAXI_PREDICTIONS_DB_URI``): the unit tests of the
SQLite store (tests/unit/test_prediction_store.py) run again on a real PostgreSQL, through the
``store`` fixture below; and what a gateway pod reads is what the worker pod wrote."""

from __future__ import annotations

import pytest

from taxi_mlops.lineage.predictions import PG_SCHEMA, PredictionStore, StoreUnavailable
from taxi_mlops.settings import Settings
from tests.unit.test_prediction_store import (  # noqa: F401 (collected here, on PostgreSQL)
    label, log, test_correct_uses_the_label_joins_threshold, test_get_returns_the_logged_fields,
    test_label_before_its_prediction_still_joins, test_list_filters_and_orders_newest_first,
    test_prune_deletes_old_predictions_and_only_orphaned_old_labels, test_prune_works_in_chunks,
    test_redelivery_is_idempotent_and_newest_wins)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lineage_uri(postgres):
    return postgres("lineage")


@pytest.fixture
def store(lineage_uri):
    s = PredictionStore(lineage_uri)
    with s.conn:
        s.conn.execute("TRUNCATE predictions, labels")
    yield s
    s.close()


def test_a_gateway_pod_reads_what_the_worker_pod_wrote(lineage_uri, tmp_path):
    settings = Settings(state_dir=tmp_path, predictions_db_uri=lineage_uri)
    assert settings.predictions_location == lineage_uri
    assert "127.0.0.1" not in settings.predictions_store_name  # the URI (a secret) is never shown
    writer = PredictionStore(settings.predictions_location)
    reader = PredictionStore(settings.predictions_location, readonly=True)  # no file to find
    writer.write([log("pod-1", trip_id="t-pod")], [label("t-pod", big=True)])
    got = reader.get("pod-1")
    assert got.label["big_tipper"] is True and got.label["correct"] is True
    assert reader.counts()["predictions"] >= 1

    import psycopg  # in PostgreSQL itself, in the store's own schema

    with psycopg.connect(lineage_uri, connect_timeout=10) as conn:
        row = conn.execute(f"SELECT trip_id FROM {PG_SCHEMA}.predictions WHERE request_id = 'pod-1'").fetchone()
    assert row == ("t-pod",)


def test_a_database_that_does_not_answer_is_named(tmp_path):
    from taxi_mlops.stack.process import free_port

    down = PredictionStore(f"postgresql://postgres@127.0.0.1:{free_port()}/lineage", readonly=True, timeout_s=2)
    with pytest.raises(StoreUnavailable, match="PostgreSQL does not answer"):
        down.get("r1")
