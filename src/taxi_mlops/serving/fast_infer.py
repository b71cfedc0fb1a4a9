"""The versioned v2 infer route as a pure ASGI middleware, in front of FastAPI's router.

Why: the gateway calls ``POST /v2/models/{name}/versions/{ref}/infer`` for every prediction,
and on its way to our handler FastAPI spends CPU that buys this route nothing: the exception
middleware, the router's match over KServe's routes, the dependency solver for two path
parameters and a ``Request``, and the response class (issue 11: the model server's HTTP path
cost about 1 ms of CPU per call around a 0.65 ms model call). The handler itself is the same
one the FastAPI route calls (``model_server.versioned_infer``), so both answer alike.

Only an exact ``POST /v2/models/{name}/versions/{ref}/infer`` is taken here; any other method,
path or spelling (a trailing slash, an encoded slash in ``ref``) goes on to FastAPI. An
exception is answered by the app's own handler for its class (KServe's: ``InvalidInput`` 400,
``ModelNotReady`` 503, anything else 500), looked up along the class's MRO as Starlette does.
"""

from __future__ import annotations

from typing import Awaitable, Callable

# (model name, ref, body, headers) -> (status, JSON body)
InferHandler = Callable[[str, str, bytes, dict], Awaitable[tuple[int, bytes]]]


def match(scope: dict) -> tuple[str, str] | None:
    """(model name, ref) when ``scope`` is exactly a versioned v2 infer call."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    parts = scope["path"].split("/")
    if (len(parts) != 7 or parts[0] or parts[1] != "v2" or parts[2] != "models"
            or parts[4] != "versions" or parts[6] != "infer" or not parts[3] or not parts[5]):
        return None
    return parts[3], parts[5]


class InferFastPath:
    def __init__(self, app, infer: InferHandler, exception_handlers: dict):
        self.app, self.infer, self.exception_handlers = app, infer, exception_handlers

    async def __call__(self, scope, receive, send) -> None:
        found = match(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:  # the client went away before sending the whole body
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            status, content = await self.infer(found[0], found[1], body, headers)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            response = await handler(None, exc)  # KServe's handlers do not read the request
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})

    def _handler_for(self, exc: Exception):
        for cls in type(exc).__mro__:
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None


async def read_body(receive) -> bytes | None:
    """The request body, or None when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
