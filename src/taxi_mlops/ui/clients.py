"""Small typed clients of the platform's APIs, as the control room uses them.

Every call has a timeout, and every failure becomes a ``BackendError`` that names the backend
and its URL, so a page can say "Prometheus is unavailable at ..." and go on with the rest.
Plain HTTP (httpx) rather than the backends' SDKs: MLflow's client retries for minutes and
imports in seconds, which a page that must render while MLflow is down cannot afford.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from taxi_mlops.settings import Settings

TIMEOUT_S = 5.0  # a page waits at most this long for one backend call
ACTION_TIMEOUT_S = 60.0  # promote / rollback: registry writes plus the audit event (5 s)


class BackendError(RuntimeError):
    """A backend did not answer, or answered with an error; ``str()`` says which and where."""

    def __init__(self, backend: str, url: str, message: str, status: int | None = None,
                 detail: Any = None):
        self.backend, self.url, self.message, self.status, self.detail = backend, url, message, status, detail
        super().__init__(str(self))

    @property
    def down(self) -> bool:
        """Unreachable, timed out or a 5xx: the backend, not the request, is the problem."""
        return self.status is None or self.status >= 500

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.backend} is unavailable at {self.url}: {self.message}"
        if self.down:  # it answers, but something behind it does not
            return f"{self.backend} at {self.url} answered {self.status}: {self.message}"
        return f"{self.backend} refused the request ({self.status}): {self.message}"


def _detail(response: httpx.Response) -> tuple[str, Any]:
    """A readable message and the parsed ``detail`` of an error response."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase, None
    detail = body.get("detail", body.get("error", body.get("message", body))) if isinstance(body, dict) else body
    if isinstance(detail, list):  # the gateway's 422: [{"field", "message"}]
        text = "; ".join(f"{d.get('field', '?')}: {d.get('message', d)}" if isinstance(d, dict) else str(d)
                         for d in detail)
    else:
        text = str(detail)
    return text[:500], detail


class _Api:
    backend = "backend"

    def __init__(self, base_url: str, timeout_s: float = TIMEOUT_S, auth: httpx.Auth | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.auth = auth  # MLflow's basic auth (security.mlflow_http_auth); None elsewhere

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (), timeout_s: float | None = None,
                 **kwargs) -> httpx.Response:
        timeout = timeout_s or self.timeout_s
        try:
            response = httpx.request(method, f"{self.base_url}{path}", timeout=timeout, auth=self.auth,
                                     **kwargs)
        except httpx.TimeoutException:
            raise BackendError(self.backend, self.base_url, f"no answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise BackendError(self.backend, self.base_url,
                               f"unreachable ({type(exc).__name__}: {exc or 'no detail'})") from None
        if response.status_code >= 400 and response.status_code not in ok:
            message, detail = _detail(response)
            raise BackendError(self.backend, self.base_url, message, response.status_code, detail)
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise BackendError(self.backend, self.base_url,
                               f"answered {path} with something that is not JSON") from None


# ---- gateway ---------------------------------------------------------------------------------
class Gateway(_Api):
    backend = "gateway"

    def health(self) -> dict:
        """The gateway's own dependency checks (a 503 still carries them)."""
        return self._request("GET", "/health", ok=(503,)).json()

    def predict(self, trip: dict) -> dict:
        return self._json("POST", "/predict", json=trip)

    def served_models(self) -> dict:
        return self._json("GET", "/models")

    def routing(self) -> dict:
        return self._json("GET", "/routing")

    def experiments(self) -> list[dict]:
        return self._json("GET", "/experiments")["experiments"]

    def promote(self, version: str, reason: str, token: str) -> dict:
        return self._json("POST", "/models/promote", json={"version": version, "reason": reason},
                          headers=_bearer(token), timeout_s=ACTION_TIMEOUT_S)

    def rollback(self, reason: str, token: str) -> dict:
        return self._json("POST", "/models/rollback", json={"reason": reason},
                          headers=_bearer(token), timeout_s=ACTION_TIMEOUT_S)

    def drift_reports(self, limit: int = 50) -> list[dict]:
        return self._json("GET", "/monitoring/drift-reports", params={"limit": limit})["reports"]

    def drift_report(self, name: str) -> dict:
        return self._json("GET", f"/monitoring/drift-reports/{quote(name, safe='')}")

    def prediction_lineage(self, request_id: str) -> dict:
        return self._json("GET", f"/predictions/{quote(request_id, safe='')}")

    def recent_predictions(self, limit: int = 20) -> Any:
        return self._json("GET", "/predictions", params={"limit": limit})


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token.strip()}"} if token and token.strip() else {}


def route_missing(exc: BackendError) -> bool:
    """A 404 of the route itself (FastAPI's bare "Not Found"), not of the thing asked for:
    the gateway is older than this UI."""
    return exc.status == 404 and exc.detail == "Not Found"


# ---- MLflow (REST API 2.0) -----------------------------------------------------------------------
class Mlflow(_Api):
    backend = "MLflow"

    def registered_model(self, name: str) -> dict:
        return self._json("GET", "/api/2.0/mlflow/registered-models/get",
                          params={"name": name})["registered_model"]

    def model_versions(self, name: str) -> list[dict]:
        body = self._json("GET", "/api/2.0/mlflow/model-versions/search",
                          params={"filter": f"name='{name}'", "max_results": 200})
        return sorted(body.get("model_versions", []), key=lambda v: int(v["version"]), reverse=True)

    def run(self, run_id: str) -> dict:
        return self._json("GET", "/api/2.0/mlflow/runs/get", params={"run_id": run_id})["run"]

    def artifact_json(self, run_id: str, path: str) -> Any:
        return self._json("GET", "/get-artifact", params={"path": path, "run_uuid": run_id})

    def run_url(self, run: dict) -> str:
        info = run.get("info", {})
        return f"{self.base_url}/#/experiments/{info.get('experiment_id', '0')}/runs/{info.get('run_id', '')}"

    def version_url(self, name: str, version: str) -> str:
        return f"{self.base_url}/#/models/{quote(name)}/versions/{version}"


def tags_of(entity: dict) -> dict[str, str]:
    """MLflow REST tags (a list of {key, value}) as a dict."""
    return {t["key"]: t.get("value", "") for t in entity.get("tags", []) or []}


def metrics_of(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run.get("data", {}).get("metrics", []) or []}


# ---- Prometheus ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (unix seconds, value)


class Prometheus(_Api):
    backend = "Prometheus"

    def _data(self, path: str, params: dict) -> Any:
        body = self._json("GET", path, params=params)
        if body.get("status") != "success":
            raise BackendError(self.backend, self.base_url,
                               f"{body.get('errorType')}: {body.get('error')}", 400)
        return body["data"]

    def query(self, expr: str) -> list[Series]:
        result = self._data("/api/v1/query", {"query": expr})["result"]
        return [Series(r["metric"], [(float(r["value"][0]), float(r["value"][1]))]) for r in result]

    def query_range(self, expr: str, minutes: float, points: int = 120) -> list[Series]:
        """``expr`` over the last ``minutes``, at most ``points`` points per series."""
        end = time.time()
        start = end - minutes * 60
        step = max(1.0, round(minutes * 60 / points))
        result = self._data("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})["result"]
        return [Series(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in result]

    def targets(self) -> list[dict]:
        return self._data("/api/v1/targets", {"state": "active"})["activeTargets"]


# ---- Alertmanager ------------------------------------------------------------------------------
class Alertmanager(_Api):
    backend = "Alertmanager"

    def firing(self) -> list[dict]:
        """Active alerts that are neither silenced nor inhibited (what someone should look at)."""
        return self._json("GET", "/api/v2/alerts",
                          params={"active": "true", "silenced": "false", "inhibited": "false"})


@dataclass(frozen=True)
class Clients:
    gateway: Gateway
    mlflow: Mlflow
    prometheus: Prometheus
    alertmanager: Alertmanager

    @classmethod
    def from_settings(cls, settings: Settings) -> "Clients":
        from taxi_mlops import security

        return cls(Gateway(settings.gateway_url),
                   Mlflow(settings.mlflow_tracking_uri, auth=security.mlflow_http_auth(settings)),
                   Prometheus(settings.prometheus_url), Alertmanager(settings.alertmanager_url))
