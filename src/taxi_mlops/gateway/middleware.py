"""The gateway's ASGI middleware: body limit, request id, metrics.

All three are plain ASGI callables rather than Starlette's ``BaseHTTPMiddleware``, which
runs the endpoint in another task (contextvars bound here would not reach the handler's
logs) and costs far more per request than the metrics themselves should.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from taxi_mlops.gateway.metrics import METHODS, GatewayMetrics
from taxi_mlops.observability import logs

log = logging.getLogger("taxi_mlops.gateway")

REQUEST_ID_HEADER = b"x-request-id"
SCOPE_KEY = "taxi.request"  # per-request dict: request_id, model_version (set by the route)
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
PREDICT_PATH = "/predict"


def sanitize_request_id(value: str | bytes | None) -> str:
    """The client's id if it is a sane token (<= 64 of ``[A-Za-z0-9._-]``), else a new one.

    A bad id is replaced, not refused: the id is for tracing, and a 4xx over it would turn a
    logging detail into an outage for a client with an odd proxy.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            value = None
    if value and _SANE_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def request_context(scope) -> dict:
    """The per-request dict ``RequestIdMiddleware`` put in the scope (or a fresh one)."""
    return scope.setdefault(SCOPE_KEY, {"request_id": uuid.uuid4().hex, "model_version": None})


class RouteLabeler:
    """Route label = the matched route's path template, anything else ``other``.

    The label set is bounded by the app's routes, whatever paths clients send. Static paths
    (all of ours) are one dict lookup; templated ones are matched like the router does.
    """

    def __init__(self, routes):
        from starlette.routing import Match

        self._match = Match
        self.static: dict[str, str] = {}
        self.templated = []
        for route in routes:
            path = getattr(route, "path", None)
            if path is None:
                continue
            if "{" in path:
                self.templated.append(route)
            else:
                self.static[path] = path

    def __call__(self, scope) -> str:
        path = scope.get("path", "")
        label = self.static.get(path)
        if label is not None:
            return label
        for route in self.templated:
            match, _ = route.matches(scope)
            if match != self._match.NONE:
                return route.path
        return "other"


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): valid JSON, but alone (unpaired) it is
# no character, and Python's parser hands it on as a str that cannot be encoded.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def has_lone_surrogate(body: bytes) -> bool:
    """True if ``body`` is JSON holding a string (or key) with an unpaired surrogate. Only a
    body with a surrogate escape in it is parsed (an emoji escaped as a pair is fine)."""
    if not _SURROGATE_ESCAPE.search(body):
        return False
    try:
        values = [json.loads(body)]
    except (ValueError, RecursionError):
        return False  # not JSON: the route's own 422 names the body
    while values:
        value = values.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            values.extend(value)
            values.extend(value.values())
        elif isinstance(value, list):
            values.extend(value)
    return False


class BodyLimit:
    """413 for a body over ``max_bytes``: by its Content-Length, or counted as a chunked body
    streams in. Bodies are small (one trip), so the accepted ones are buffered and replayed.

    Being the one place that holds every body, it also refuses (422) JSON whose strings are
    not valid Unicode (a lone surrogate such as ``"\\ud800"``): pydantic passes such a str
    on, and the first log line, Kafka message or error message echoing it fails (a 500)."""

    def __init__(self, app, max_bytes: int, per_path: dict[str, int] | None = None):
        self.app, self.max_bytes, self.per_path = app, max_bytes, per_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.per_path.get(scope.get("path", ""), self.max_bytes)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await self._reject(send, limit)
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > limit:
                return await self._reject(send, limit)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if has_lone_surrogate(body):
            return await self._refuse(send, 422, "request body is not valid Unicode: a string holds "
                                                 "a lone surrogate (\\ud800-\\udfff)")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send, limit: int):
        await self._refuse(send, 413, f"request body over {limit} bytes")

    @staticmethod
    async def _refuse(send, status: int, message: str):
        """The ``FieldErrors`` body the route's own 422s carry, naming the body."""
        body = json.dumps({"detail": [{"field": "body", "message": message}]}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Give each request an id (the client's ``X-Request-ID`` if sane), bind it to every log
    record written while handling it, return it as ``X-Request-ID``, and write one INFO line
    per ``/predict`` (request_id, model_version, latency_ms, status) — the access log that
    lets one request be followed from the gateway to the model server."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client_id = None
        for name, value in scope.get("headers") or ():
            if name == REQUEST_ID_HEADER:
                client_id = value
                break
        request_id = sanitize_request_id(client_id)
        ctx = scope[SCOPE_KEY] = {"request_id": request_id, "model_version": None}
        header = (REQUEST_ID_HEADER, request_id.encode())
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        started = time.perf_counter()
        token = logs.bind(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope.get("path") == PREDICT_PATH:
                latency_ms = round((time.perf_counter() - started) * 1000, 3)
                with logs.bound(model_version=ctx.get("model_version")):
                    log.info("predict", extra={"latency_ms": latency_ms, "status": status})
            logs.reset(token)


class MetricsMiddleware:
    """``taxi_gateway_requests_total`` and ``..._request_duration_seconds`` for every request,
    including the 413s and 422s answered before (or instead of) the route. Only added when
    ``settings.metrics_enabled``: with it off there is no recording at all."""

    def __init__(self, app, metrics: GatewayMetrics, labeler: RouteLabeler | None = None):
        self.app, self.metrics, self.labeler = app, metrics, labeler

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.labeler is None:  # routes are complete once the app serves
            self.labeler = RouteLabeler(scope["app"].routes)
        route = self.labeler(scope)
        method = scope["method"] if scope["method"] in METHODS else "other"
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.record_request(route, method, status, time.perf_counter() - started)
