"""What the gateway accepts, and that its OpenAPI says what its errors look like (issue 11:
found by fuzzing). No stack: every request here is answered before a route needs Feast or the
model server (refused by validation, the body check or the admin token)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from taxi_mlops.gateway.app import create_app
from taxi_mlops.gateway.middleware import has_lone_surrogate
from taxi_mlops.gateway.schemas import Trip
from taxi_mlops.settings import Settings

TRIP = {"trip_id": "u-1", "trip_miles": 2.5, "fare": 9.75, "trip_seconds": 600,
        "trip_start_hour": 13, "trip_start_day": 4, "trip_start_month": 7,
        "pickup_community_area": 8, "payment_type": "Credit Card", "company": "Flash Cab"}
ADMIN_OPERATIONS = [("put", "/routing"), ("post", "/experiments"), ("post", "/experiments/{experiment_id}/stop"),
                    ("post", "/models/promote"), ("post", "/models/rollback"), ("post", "/models/reload")]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(Settings(state_dir=tmp_path_factory.mktemp("state"), metrics_enabled=False,
                               admin_token="unit-token"))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)  # no lifespan: nothing here reaches Feast or the model server


@pytest.fixture(scope="module")
def openapi(client) -> dict:
    return client.get("/openapi.json").json()


# ---- strict types ---------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("trip_start_hour", False), ("trip_start_hour", True), ("trip_start_day", True),
    ("pickup_community_area", True), ("trip_miles", True), ("fare", False),
    ("trip_start_hour", "13"), ("fare", "9.75"), ("trip_start_hour", 13.5),
    ("payment_type", 3), ("company", False), ("trip_start_timestamp", True),
])
def test_a_value_of_the_wrong_json_type_is_422_naming_the_field(client, field, value):
    r = client.post("/predict", json={**TRIP, field: value})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["detail"]] == [field]


def test_json_schema_numbers_are_still_accepted():
    """An integer is a number, and 13.0 is an integer (JSON Schema): both keep working."""
    trip = Trip.model_validate({**TRIP, "trip_miles": 3, "fare": 10, "trip_start_hour": 13.0,
                                "trip_seconds": 600.0, "pickup_community_area": 8.0})
    assert (trip.trip_miles, trip.fare) == (3.0, 10.0)
    assert (trip.trip_start_hour, trip.trip_seconds, trip.pickup_community_area) == (13, 600, 8)
    assert isinstance(trip.trip_start_hour, int)


def test_time_parts_are_required_unless_the_timestamp_is_given(client, openapi):
    """The schema says "hour, day and month, or a timestamp": what ``_raw_row`` accepts (the
    fuzzer found a 200 for a trip the schema called invalid)."""
    without = {k: v for k, v in TRIP.items() if k not in ("trip_start_hour", "trip_start_day",
                                                          "trip_start_month")}
    trip = Trip.model_validate({**without, "trip_start_timestamp": 1_700_000_000})
    assert (trip.trip_start_hour, trip.trip_start_day, trip.trip_start_month) == (22, 3, 11)
    r = client.post("/predict", json=without)
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["detail"]} == {"trip_start_hour", "trip_start_day", "trip_start_month"}
    schema = openapi["components"]["schemas"]["Trip"]
    assert "trip_start_hour" not in schema["required"]
    assert {"required": ["trip_start_timestamp"], "properties": {"trip_start_timestamp": {"type": "integer"}}} \
        in schema["anyOf"]


def test_batch_trips_are_held_to_the_same_types():
    with pytest.raises(ValueError, match="trip_start_hour"):
        Trip.model_validate({**TRIP, "trip_start_hour": False})


# ---- bodies that are not JSON -----------------------------------------------------------------
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("body,message", [
    (b"\xff\xfe{", "not UTF-8"),                       # was FastAPI's undocumented 400
    ('{"fare": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    (b"[" * 5000 + b"]" * 5000, "not valid JSON"),     # past json's recursion limit: was 400 too
    (b"{not json", "not valid JSON"),
])
def test_a_body_that_is_not_json_is_422_naming_the_body(client, path, body, message):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["field"] == "body" and message in error["message"]


def test_a_body_that_is_not_utf8_is_refused_before_the_admin_token_is_checked(client):
    r = client.put("/routing", content=b"\xc3\x28", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body"


# ---- other errors -----------------------------------------------------------------------------
def test_405_allows_every_method_of_the_path(client):
    r = client.request("OPTIONS", "/routing")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, PUT"
    assert client.delete("/predict").headers["allow"] == "POST"


def test_an_unknown_path_is_still_fastapis_404(client):
    r = client.get("/no-such-route")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("headers,status", [({}, 401), ({"Authorization": "Bearer wrong"}, 403)])
def test_admin_token_errors_match_their_documented_body(client, openapi, headers, status):
    r = client.post("/models/reload", headers=headers)
    assert r.status_code == status
    documented = openapi["paths"]["/models/reload"]["post"]["responses"][str(status)]
    assert documented["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorMessage")
    assert set(r.json()) == {"detail"}


# ---- the OpenAPI documents the real bodies -------------------------------------------------
def test_every_body_operation_documents_413_and_422_with_the_field_errors_body(openapi):
    bodies = [(path, method, op) for path, item in openapi["paths"].items()
              for method, op in item.items() if "requestBody" in op]
    assert len(bodies) >= 6
    for path, method, op in bodies:
        for status in ("413", "422"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema["$ref"] in ("#/components/schemas/FieldErrors",
                                      "#/components/schemas/HTTPValidationError"), (path, method, status)


def test_fastapis_default_422_body_is_replaced_by_the_one_the_handler_writes(openapi):
    schemas = openapi["components"]["schemas"]
    assert schemas["HTTPValidationError"] == {"$ref": "#/components/schemas/FieldErrors"}
    assert set(schemas["FieldError"]["properties"]) == {"field", "message"}
    assert "ValidationError" not in schemas


@pytest.mark.parametrize("method,path", ADMIN_OPERATIONS)
def test_admin_operations_document_401_and_403(openapi, method, path):
    responses = openapi["paths"][path][method]["responses"]
    for status in ("401", "403"):
        assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorMessage")


# ---- strings that are valid JSON but not valid Unicode ------------------------------------------
@pytest.mark.parametrize("path,body", [
    # The spec's sticky_key error echoes the value: pydantic itself failed to encode it (a 500).
    ("/experiments", '{"sticky_key": "x\\ud800"}'),
    ("/predict", json.dumps({**TRIP, "company": "@"}).replace('"@"', '"\\udc00"')),
    ("/predict/batch", json.dumps({"trips": [{**TRIP, "@": 1}]}).replace('"@"', '"\\ud83d"')),
])
def test_a_lone_surrogate_anywhere_in_a_body_is_422_naming_the_body(client, path, body):
    r = client.post(path, content=body, headers={"content-type": "application/json",
                                                 "authorization": "Bearer unit-token"})
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["field"] == "body" and "lone surrogate" in error["message"]


@pytest.mark.parametrize("body,lone", [
    (b'{"company": "\\ud83d\\ude95 Cab"}', False),   # a pair: one character (a taxi)
    (b'{"company": "C:\\\\ud800"}', False),          # an escaped backslash, then text
    (b'{"company": "\\ud83d"}', True),
    (b'{"a": [1, {"\\udfff": 2}]}', True),
    (b'{"company": "\\ud800', False),                # not JSON: the route's 422 names the body
])
def test_lone_surrogate_detection(body, lone):
    assert has_lone_surrogate(body) is lone
