"""Client of the model servers' Open Inference Protocol v2 endpoints, with hard timeouts.

Targets: ``infer_batch(..., target="champion")`` calls the versioned path
``/v2/models/{name}/versions/{target}/infer`` (a target is an alias or a version number; the
model server resolves it and answers with the actual version); ``target=None`` calls the
unversioned path (the model server's serving alias).

Replicas: each model-server process (``Settings.model_server_urls``) hosts every served
version. Requests go to the replica with the fewest outstanding requests (ties: round robin).
A replica whose connection is refused, reset or closed is taken out of rotation and the
request is retried on another: inference has no side effects, so a retry is safe even when
the dead replica had received the request. A timeout is not retried (the replica may be
slow, not dead; the routing fallback decides). A background probe puts a replica back once
it answers ``ready``.

The request id goes both in the v2 body (``id``) and as the ``X-Request-ID`` header, which
the model server binds to its own log records: one id follows a request across components.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import httpx
import orjson

from taxi_mlops.features import schema

log = logging.getLogger("taxi_mlops.gateway")
PROBE_INTERVAL_S = 1.0


class ModelServerError(RuntimeError):
    """The model server is unreachable, slow or answered with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Replica:
    def __init__(self, url: str, timeout_s: float):
        self.url = url.rstrip("/")
        self.client = httpx.AsyncClient(base_url=self.url, timeout=timeout_s,
                                        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self.outstanding = 0
        self.healthy = True
        self.failures = 0
        self.down_since: float | None = None

    def mark_down(self, reason: str) -> None:
        if self.healthy:
            log.warning("model-server replica out of rotation", extra={"replica": self.url, "reason": reason})
        self.healthy, self.down_since = False, time.monotonic()
        self.failures += 1

    def mark_up(self) -> None:
        if not self.healthy:
            log.info("model-server replica back in rotation", extra={"replica": self.url})
        self.healthy, self.down_since = True, None


class InferenceClient:
    def __init__(self, base_urls: str | list[str], model_name: str, timeout_s: float):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.replicas = [Replica(u, timeout_s) for u in urls]
        self.base_url = self.replicas[0].url
        self.model_name = model_name
        self._rr = itertools.count()
        self._probe_task: asyncio.Task | None = None

    # ---- balancing -------------------------------------------------------------------------
    def pick(self, exclude: set | None = None) -> Replica | None:
        """Least outstanding requests among the healthy replicas; round robin among ties."""
        candidates = [r for r in self.replicas if r.healthy and (not exclude or r.url not in exclude)]
        if not candidates:
            return None
        least = min(r.outstanding for r in candidates)
        ties = [r for r in candidates if r.outstanding == least]
        return ties[next(self._rr) % len(ties)]

    def _path(self, target: str | None, verb: str) -> str:
        if target is None:
            return f"/v2/models/{self.model_name}/{verb}"
        return f"/v2/models/{self.model_name}/versions/{target}/{verb}"

    async def _post(self, path: str, body: bytes, headers: dict) -> httpx.Response:
        tried: set[str] = set()
        while True:
            replica = self.pick(tried)
            if replica is None:
                self._ensure_probe()
                raise ModelServerError(
                    f"no model server replica is reachable ({', '.join(r.url for r in self.replicas)})")
            tried.add(replica.url)
            replica.outstanding += 1
            try:
                return await replica.client.post(path, content=body, headers=headers)
            except httpx.TimeoutException as exc:  # slow, not dead: the caller's fallback decides
                raise ModelServerError(f"model server at {replica.url} timed out") from exc
            except httpx.TransportError as exc:
                # Refused, reset or closed: the replica is gone. Inference has no side effects,
                # so the request is retried on another replica (at most once per replica).
                replica.mark_down(str(exc) or type(exc).__name__)
                self._ensure_probe()
                continue
            finally:
                replica.outstanding -= 1

    # ---- inference -------------------------------------------------------------------------
    @staticmethod
    def _body(request_id: str, rows: list[dict]) -> bytes:
        """The v2 request as bytes (orjson: a few times cheaper than httpx's ``json=``)."""
        return orjson.dumps({
            "id": request_id,
            "inputs": [
                {"name": name, "datatype": dt, "shape": [len(rows)], "data": [r[name] for r in rows]}
                for name, dt in schema.SERVING_DTYPES.items()
            ],
        })

    async def infer(self, request_id: str, features: dict, target: str | None = None) -> tuple[float, str | None]:
        probabilities, version = await self.infer_batch(request_id, [features], target)
        return probabilities[0], version

    async def infer_batch(self, request_id: str, rows: list[dict],
                          target: str | None = None) -> tuple[list[float], str | None]:
        """One v2 request for ``rows`` (model inputs each); probabilities in the same order."""
        response = await self._post(self._path(target, "infer"), self._body(request_id, rows),
                                    {"X-Request-ID": request_id, "Content-Type": "application/json"})
        if response.status_code != 200:
            what = f"model {self.model_name!r}" + (f" target {target!r}" if target else "")
            raise ModelServerError(f"model server answered {response.status_code} for {what}: "
                                   f"{response.text[:300]}", status=response.status_code)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ModelServerError(f"model server answered 200 with a body that is not JSON: "
                                   f"{response.text[:200]}") from exc
        probabilities = [float(p) for p in payload["outputs"][0]["data"]]
        if len(probabilities) != len(rows):
            raise ModelServerError(f"model server answered {len(probabilities)} values for {len(rows)} rows")
        return probabilities, payload.get("model_version")

    async def warm(self, request_id: str, rows: list[dict], target: str | None = None) -> None:
        """One inference on *every* replica (start-up warm-up: each pool's first connection
        and each replica's first request are paid here, not by a caller); raises
        ``ModelServerError`` naming the first replica that does not answer 200."""
        path, body = self._path(target, "infer"), self._body(request_id, rows)
        for replica in self.replicas:
            try:
                response = await replica.client.post(path, content=body, headers={
                    "X-Request-ID": request_id, "Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                raise ModelServerError(f"model server at {replica.url}: {exc or type(exc).__name__}") from exc
            if response.status_code != 200:
                raise ModelServerError(f"model server at {replica.url} answered {response.status_code}: "
                                       f"{response.text[:200]}", status=response.status_code)

    # ---- health ----------------------------------------------------------------------------
    async def ready(self) -> dict:
        """Ready if any replica serves the model; each replica's state is reported."""
        states = []
        for replica in self.replicas:
            try:
                response = await replica.client.get(self._path(None, "ready"))
                ok = response.status_code == 200
            except httpx.HTTPError as exc:
                ok = False
                states.append({"url": replica.url, "ok": False, "error": str(exc) or type(exc).__name__})
                continue
            if ok:
                replica.mark_up()
            states.append({"url": replica.url, "ok": ok, "in_rotation": replica.healthy,
                           "outstanding": replica.outstanding})
        out = {"ok": any(s["ok"] for s in states), "url": self.base_url}
        if len(states) > 1 or not states[0]["ok"]:
            out["replicas"] = states
        if not states[0]["ok"] and "error" in states[0]:
            out["error"] = states[0]["error"]
        return out

    async def versions(self) -> dict:
        """The model server's served versions and aliases (``GET .../versions``)."""
        replica = self.pick() or self.replicas[0]
        try:
            response = await replica.client.get(f"/v2/models/{self.model_name}/versions")
        except httpx.HTTPError as exc:
            raise ModelServerError(f"model server at {replica.url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ModelServerError(f"model server answered {response.status_code}: {response.text[:200]}",
                                   status=response.status_code)
        return response.json()

    async def refresh(self, token: str | None) -> list[dict]:
        """Ask every replica to reread the registry now (hot swap without waiting for a poll)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        results = []
        for replica in self.replicas:
            try:
                response = await replica.client.post(f"/v2/models/{self.model_name}/refresh",
                                                     headers=headers, timeout=90.0)
                results.append({"url": replica.url, "status": response.status_code,
                                "body": _json_or_text(response)})
            except httpx.HTTPError as exc:
                results.append({"url": replica.url, "status": None, "error": str(exc) or type(exc).__name__})
        return results

    def _ensure_probe(self) -> None:
        if self._probe_task is None or self._probe_task.done():
            try:
                self._probe_task = asyncio.get_running_loop().create_task(self._probe_down())
            except RuntimeError:
                pass

    async def _probe_down(self) -> None:
        """Until every replica is back: probe the down ones every second."""
        while any(not r.healthy for r in self.replicas):
            await asyncio.sleep(PROBE_INTERVAL_S)
            for replica in self.replicas:
                if replica.healthy:
                    continue
                try:
                    response = await replica.client.get("/v2/health/ready", timeout=PROBE_INTERVAL_S)
                    if response.status_code == 200:
                        replica.mark_up()
                except httpx.HTTPError:
                    pass

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        for replica in self.replicas:
            await replica.client.aclose()


def _json_or_text(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        return response.text[:300]
