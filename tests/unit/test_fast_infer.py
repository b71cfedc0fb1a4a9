"""The model server's versioned-infer fast path as plain ASGI: which requests it takes, what it
sends, and that errors go through the app's own handlers (the stack tests in
``test_model_versions.py`` drive it on the real model server)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput, ModelNotReady

from taxi_mlops.serving import fast_infer
from taxi_mlops.serving.fast_infer import InferFastPath


def scope(path: str, method: str = "POST", headers=((b"x-request-id", b"r-1"),)) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": list(headers)}


def drive(middleware, sc: dict, chunks=(b'{"inputs": []}',), disconnect: bool = False) -> list[dict]:
    """Run one request through ``middleware``; the messages it sent."""
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    if disconnect:
        incoming = [{"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(sc, receive, send))
    return sent


class App:
    """The next ASGI app: records that it was reached."""

    def __init__(self):
        self.reached = []

    async def __call__(self, sc, receive, send):
        self.reached.append(sc["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


def recording_handler(calls: list, result=(200, b'{"ok":1}'), error: Exception | None = None):
    async def infer(name, ref, body, headers):
        calls.append((name, ref, body, headers))
        if error is not None:
            raise error
        return result
    return infer


@pytest.mark.parametrize("path,expected", [
    ("/v2/models/m/versions/3/infer", ("m", "3")),
    ("/v2/models/chicago-taxi-tips/versions/champion/infer", ("chicago-taxi-tips", "champion")),
    ("/v2/models/m/versions/3/infer/", None),  # FastAPI decides about the trailing slash
    ("/v2/models/m/versions//infer", None),
    ("/v2/models/m/infer", None),  # KServe's unversioned route
    ("/v2/models/m/versions/a/b/infer", None),
    ("/v1/models/m/versions/3/infer", None),
    ("v2/models/m/versions/3/infer/x", None),
])
def test_only_the_exact_versioned_infer_path_is_matched(path, expected):
    assert fast_infer.match(scope(path)) == expected


def test_other_methods_and_scopes_go_to_the_app():
    assert fast_infer.match(scope("/v2/models/m/versions/3/infer", method="GET")) is None
    assert fast_infer.match({"type": "websocket", "path": "/v2/models/m/versions/3/infer"}) is None


def test_a_matched_call_is_answered_by_the_handler_with_the_whole_body_and_headers():
    calls, app = [], App()
    sent = drive(InferFastPath(app, recording_handler(calls, (200, b'{"outputs":[]}')), {}),
                 scope("/v2/models/m/versions/champion/infer"), chunks=(b'{"in', b'puts": []}'))
    assert app.reached == []
    assert calls == [("m", "champion", b'{"inputs": []}', {"x-request-id": "r-1"})]
    start, body = sent
    assert start["status"] == 200
    assert dict(start["headers"]) == {b"content-type": b"application/json", b"content-length": b"14"}
    assert body["body"] == b'{"outputs":[]}'


def test_a_status_from_the_handler_is_kept():
    sent = drive(InferFastPath(App(), recording_handler([], (404, b'{"error":"no"}')), {}),
                 scope("/v2/models/x/versions/1/infer"))
    assert sent[0]["status"] == 404 and sent[1]["body"] == b'{"error":"no"}'


def test_anything_else_reaches_the_app_untouched():
    calls, app = [], App()
    sent = drive(InferFastPath(app, recording_handler(calls), {}), scope("/v2/models/m/infer"))
    assert calls == [] and app.reached == ["/v2/models/m/infer"] and sent[0]["status"] == 299


def test_an_exception_is_answered_by_the_app_handler_for_its_class_or_a_base_class():
    async def invalid(_, exc):
        return JSONResponse(status_code=400, content={"error": str(exc)})

    async def generic(_, exc):
        return JSONResponse(status_code=500, content={"error": "generic"})

    handlers = {InvalidInput: invalid, Exception: generic}
    sent = drive(InferFastPath(App(), recording_handler([], error=InvalidInput("missing input(s): fare")),
                               handlers), scope("/v2/models/m/versions/1/infer"))
    assert sent[0]["status"] == 400 and b"missing input(s): fare" in sent[1]["body"]
    sent = drive(InferFastPath(App(), recording_handler([], error=ModelNotReady("m")), handlers),
                 scope("/v2/models/m/versions/1/infer"))
    assert sent[0]["status"] == 500 and b"generic" in sent[1]["body"]  # no 503 handler given: MRO to Exception


def test_an_exception_without_a_handler_propagates():
    with pytest.raises(RuntimeError, match="boom"):
        drive(InferFastPath(App(), recording_handler([], error=RuntimeError("boom")), {}),
              scope("/v2/models/m/versions/1/infer"))


def test_a_client_gone_before_its_body_gets_nothing_and_calls_nothing():
    calls = []
    sent = drive(InferFastPath(App(), recording_handler(calls), {}), scope("/v2/models/m/versions/1/infer"),
                 disconnect=True)
    assert sent == [] and calls == []
