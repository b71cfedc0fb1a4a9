"""The model server speaks the Open Inference Protocol v2 (and v1) as specified."""

import httpx
import pytest

from taxi_mlops.features import schema

pytestmark = pytest.mark.slow


def _inputs(values: dict, n: int = 1) -> list[dict]:
    return [{"name": name, "datatype": dt, "shape": [n], "data": [values[name]] * n}
            for name, dt in schema.SERVING_DTYPES.items()]


@pytest.fixture
def raw_inputs(trip):
    return schema.model_inputs(trip, {"area_trip_count": 900.0, "area_avg_fare": 11.0,
                                      "area_tip_rate": 0.3})


def test_health_endpoints(stack):
    base = stack.model_server_url
    assert httpx.get(f"{base}/v2/health/live", timeout=5).json()["live"] is True
    assert httpx.get(f"{base}/v2/health/ready", timeout=5).json()["ready"] is True
    ready = httpx.get(f"{base}/v2/models/{stack.model_name}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_model_metadata_lists_named_typed_inputs(stack):
    meta = httpx.get(f"{stack.model_server_url}/v2/models/{stack.model_name}", timeout=5).json()
    assert meta["name"] == stack.model_name
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == schema.SERVING_DTYPES
    assert meta["outputs"] == [{"name": "tip_probability", "datatype": "FP32", "shape": [-1]}]


def test_infer_with_named_inputs_returns_one_probability_per_row(stack, champion, raw_inputs):
    body = {"id": "req-42", "inputs": _inputs(raw_inputs, n=3)}
    r = httpx.post(f"{stack.model_server_url}/v2/models/{stack.model_name}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-42" and out["model_name"] == stack.model_name
    assert out["model_version"] == champion.version
    [output] = out["outputs"]
    assert output["name"] == "tip_probability" and output["datatype"] == "FP32"
    assert output["shape"] == [3] and len(set(output["data"])) == 1
    assert 0.0 <= output["data"][0] <= 1.0


def test_v1_predict_matches_v2(stack, raw_inputs):
    v1 = httpx.post(f"{stack.model_server_url}/v1/models/{stack.model_name}:predict",
                    json={"instances": [raw_inputs]}, timeout=10)
    v2 = httpx.post(f"{stack.model_server_url}/v2/models/{stack.model_name}/infer",
                    json={"inputs": _inputs(raw_inputs)}, timeout=10)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"][0] == pytest.approx(v2.json()["outputs"][0]["data"][0], rel=1e-6)


@pytest.mark.parametrize("mutate,needle", [
    (lambda inputs: inputs[1:], "missing input(s): trip_miles"),
    (lambda inputs: [{**inputs[0], "data": ["far"]}] + inputs[1:], "trip_miles"),
    (lambda inputs: inputs + [{"name": "tip", "datatype": "FP32", "shape": [1], "data": [1.0]}], "tip"),
    (lambda inputs: [{**inputs[0], "shape": [2], "data": [1.0, 2.0]}] + inputs[1:], "trip_miles"),
])
def test_bad_inference_requests_are_400_naming_the_input(stack, raw_inputs, mutate, needle):
    body = {"inputs": mutate(_inputs(raw_inputs))}
    r = httpx.post(f"{stack.model_server_url}/v2/models/{stack.model_name}/infer", json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_unknown_model_is_404(stack):
    r = httpx.get(f"{stack.model_server_url}/v2/models/no-such-model/ready", timeout=5)
    assert r.status_code == 404
