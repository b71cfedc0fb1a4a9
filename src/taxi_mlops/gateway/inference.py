"""Client of the model server's Open Inference Protocol v2 endpoint, with a hard timeout.

The request id goes both in the v2 body (``id``) and as the ``X-Request-ID`` header, which
the model server binds to its own log records: one id follows a request across components.
"""

from __future__ import annotations

import httpx

from taxi_mlops.features import schema


class ModelServerError(RuntimeError):
    """The model server is unreachable, slow or answered with an error."""


class InferenceClient:
    def __init__(self, base_url: str, model_name: str, timeout_s: float):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def infer(self, request_id: str, features: dict) -> tuple[float, str | None]:
        probabilities, version = await self.infer_batch(request_id, [features])
        return probabilities[0], version

    async def infer_batch(self, request_id: str, rows: list[dict]) -> tuple[list[float], str | None]:
        """One v2 request for ``rows`` (model inputs each); probabilities in the same order."""
        body = {
            "id": request_id,
            "inputs": [
                {"name": name, "datatype": dt, "shape": [len(rows)], "data": [r[name] for r in rows]}
                for name, dt in schema.SERVING_DTYPES.items()
            ],
        }
        url = f"/v2/models/{self.model_name}/infer"
        try:
            response = await self._client.post(url, json=body, headers={"X-Request-ID": request_id})
        except httpx.TimeoutException as exc:
            raise ModelServerError(f"model server at {self.base_url} timed out") from exc
        except httpx.HTTPError as exc:
            raise ModelServerError(f"model server at {self.base_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ModelServerError(
                f"model server answered {response.status_code}: {response.text[:300]}")
        payload = response.json()
        probabilities = [float(p) for p in payload["outputs"][0]["data"]]
        if len(probabilities) != len(rows):
            raise ModelServerError(f"model server answered {len(probabilities)} values for {len(rows)} rows")
        return probabilities, payload.get("model_version")

    async def ready(self) -> dict:
        try:
            response = await self._client.get(f"/v2/models/{self.model_name}/ready")
            return {"ok": response.status_code == 200, "url": self.base_url}
        except httpx.HTTPError as exc:
            return {"ok": False, "url": self.base_url, "error": str(exc) or type(exc).__name__}

    async def close(self) -> None:
        await self._client.aclose()
