"""Batch scoring (issue 9.5): POST /predict/batch and `taxi-mlops predict --file x.csv`."""

from __future__ import annotations

import csv

import httpx
import pandas as pd
import pytest

from pydantic import ValidationError

from taxi_mlops.gateway.batch import row_to_trip, score_csv
from taxi_mlops.gateway.schemas import Trip


def test_a_bad_trip_gets_its_own_error_and_the_others_are_answered(stack, trip):
    trips = [{**trip, "trip_id": f"b-{i}"} for i in range(5)]
    trips[2] = {**trips[2], "fare": -3}
    trips[4] = {**trips[4], "tips": 1.0}
    r = httpx.post(f"{stack.gateway_url}/predict/batch", json={"trips": trips}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["answered"], body["rejected"]) == (3, 2)
    assert [x["index"] for x in body["results"]] == list(range(5))
    assert [e["field"] for e in body["results"][2]["errors"]] == ["fare"]
    assert [e["field"] for e in body["results"][4]["errors"]] == ["tips"]
    single = httpx.post(f"{stack.gateway_url}/predict", json=trips[0], timeout=10).json()
    first = body["results"][0]["prediction"]
    assert first["trip_id"] == "b-0"
    assert first["tip_probability"] == pytest.approx(single["tip_probability"], abs=1e-6)
    assert first["request_id"] == f"{body['request_id']}-0"


def test_batch_size_is_bounded(stack, trip):
    r = httpx.post(f"{stack.gateway_url}/predict/batch", json={"trips": [trip] * 1001}, timeout=30)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "trips"
    r = httpx.post(f"{stack.gateway_url}/predict/batch", json={"trips": []}, timeout=30)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "trips"


def test_a_csv_of_raw_rows_is_scored_in_order(stack, tmp_path):
    raw = pd.read_csv(stack.data_csv).head(2500)  # 3 chunks, label column included
    raw.loc[7, "trip_miles"] = -1.0
    src, dst = tmp_path / "trips.csv", tmp_path / "out.csv"
    raw.to_csv(src, index=False)
    seen = []
    result = score_csv(stack.gateway_url, src, dst, progress=lambda done, total: seen.append(done))
    invalid = set()
    for i, row in enumerate(raw.to_dict("records")):
        try:
            Trip.model_validate(row_to_trip({k: ("" if pd.isna(v) else v) for k, v in row.items()}))
        except ValidationError:
            invalid.add(i)
    assert 7 in invalid and len(invalid) < 10
    assert result["rows"] == 2500 and result["rejected"] == len(invalid)
    assert result["answered"] == 2500 - len(invalid)
    assert result["ignored_columns"] == ["tips"]
    assert seen == [1000, 2000, 2500]
    with open(dst) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["row"]) for r in rows] == list(range(2500))
    assert rows[7]["error"].startswith("trip_miles") and rows[7]["tip_probability"] == ""
    assert {i for i, r in enumerate(rows) if r["error"]} == invalid
    assert all(0.0 <= float(r["tip_probability"]) <= 1.0 for i, r in enumerate(rows) if i not in invalid)


def test_csv_cells_become_typed_json():
    trip = row_to_trip({"trip_seconds": "600.0", "fare": "9.5", "company": "", "tips": "2.0",
                        "pickup_census_tract": "17031081500.0", "payment_type": "Cash"})
    assert trip == {"trip_seconds": 600, "fare": 9.5, "company": None,
                    "pickup_census_tract": 17031081500, "payment_type": "Cash"}
