"""Errors a client can act on: 422 naming each bad field, 503 naming the dependency,
401/403 for a missing/wrong admin token, 404/409 for the control plane.

Registered by ``app.register_exception_handlers``; ``DependencyDown`` is raised by the
``Predictor``, the control-plane errors by ``control.Control`` (no HTTP in either) and turned
into responses here. The same module documents those bodies: ``documented`` builds a route's
``responses=``, and the OpenAPI is rewritten so every operation's 413/422 shows the body the
handlers really write (FastAPI would document its own ``loc``/``msg`` shape), which is what
the fuzz test (tests/test_fuzz_gateway.py) holds every response to.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from taxi_mlops.gateway.schemas import DependencyError, ErrorMessage, FieldErrors

# The body each error status carries (the handlers below and middleware.BodyLimit write them).
ERROR_MODELS = {401: ErrorMessage, 403: ErrorMessage, 404: ErrorMessage, 409: ErrorMessage,
                413: FieldErrors, 422: FieldErrors, 503: DependencyError}
ADMIN = {401: "No bearer token, or not 'Bearer <token>'.", 403: "Wrong bearer token."}
BODY_METHODS = ("post", "put", "patch")  # the methods middleware.BodyLimit reads a body for


def documented(descriptions: dict[int, str]) -> dict:
    """A route's ``responses=``: each status with its description and the body it carries."""
    return {status: {"model": ERROR_MODELS[status], "description": text}
            for status, text in descriptions.items()}


class DependencyDown(Exception):
    """A dependency (``feature_store`` or ``model_server``) failed or timed out."""

    def __init__(self, dependency: str, message: str):
        super().__init__(message)
        self.dependency, self.message = dependency, message


def validation_errors(exc: RequestValidationError) -> list[dict]:
    """Pydantic's errors as ``{"field", "message"}``: the field path without its root (``body``,
    ``path``, ``query``), so a bad ``limit`` or ``request_id`` is named as the client wrote it."""
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("path", "query"):
            loc = loc[1:2]  # the parameter's name (a union's member tags would follow it)
        elif loc and loc[0] == "body":
            loc = loc[1:]
        field = ".".join(loc) or "body"
        message = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            field, message = "body", "request body is not valid JSON"
        errors.append({"field": field, "message": message})
    return errors


def body_error(message: str, status: int = 422) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"field": "body", "message": message}]})


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": validation_errors(exc)})


async def http_error(request: Request, exc: StarletteHTTPException):
    """FastAPI's own HTTP errors, with two corrections:

    - a JSON body that ``json.loads`` fails on with something other than a JSONDecodeError
      (bytes that are not UTF-8, nesting past the recursion limit) gets a bare, undocumented
      400; it is the same client mistake as bad JSON, so the same 422 naming the body;
    - a 405's ``Allow`` lists only the methods of the first route on the path (FastAPI makes
      one route per method), so ``OPTIONS /routing`` said ``GET`` though PUT exists: it
      lists every route's methods.
    """
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
        return body_error("request body is not valid JSON: it is not UTF-8 encoded (RFC 8259)")
    if exc.status_code == 400 and isinstance(cause, (ValueError, RecursionError)):
        return body_error(f"request body is not valid JSON ({type(cause).__name__})")
    if exc.status_code == 405:
        allow = ", ".join(sorted(_methods_on_path(request)))
        exc = StarletteHTTPException(405, exc.detail, headers={**(exc.headers or {}), "Allow": allow})
    return await http_exception_handler(request, exc)


def _methods_on_path(request: Request) -> set[str]:
    from starlette.routing import Match

    methods = set()
    for route in request.app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return methods


async def dependency_down(request: Request, exc: DependencyDown) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": exc.message, "dependency": exc.dependency})


async def auth_error(request: Request, exc) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="taxi-mlops"'} if exc.status == 401 else None
    return JSONResponse(status_code=exc.status, content={"detail": exc.message}, headers=headers)


async def invalid_field(request: Request, exc) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{"field": exc.field, "message": exc.message}]})


async def not_found(request: Request, exc) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})


async def conflict(request: Request, exc) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


def register_exception_handlers(app: FastAPI) -> None:
    """Map each error to its response, and document those responses in the OpenAPI."""
    from taxi_mlops.gateway import control
    from taxi_mlops.security import AuthError

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DependencyDown, dependency_down)
    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(control.InvalidField, invalid_field)
    app.add_exception_handler(control.NotFound, not_found)
    app.add_exception_handler(control.Conflict, conflict)
    app.openapi = _openapi_with_error_bodies(app, app.openapi)


def _openapi_with_error_bodies(app: FastAPI, build):
    """``app.openapi`` that runs FastAPI's generator once, then ``document_error_bodies``."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            document_error_bodies(build())
        return app.openapi_schema

    return openapi


def _ref(name: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def document_error_bodies(spec: dict) -> dict:
    """Make the OpenAPI say what the handlers write, for every operation (new ones too):

    - FastAPI's default 422 body (``HTTPValidationError``: ``loc``/``msg``/``type``) becomes
      ``FieldErrors`` (``field``/``message``), the body ``validation_error`` writes;
    - every POST/PUT/PATCH declares 413 (``BodyLimit``), and 422 when it takes a body (bad
      JSON, bytes that are not UTF-8, or a field);
    - a declared error status without a body schema gets the one its handler writes.
    """
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (FieldErrors, ErrorMessage, DependencyError):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(definition.pop("$defs", {}))
        schemas[model.__name__] = definition
    schemas["HTTPValidationError"] = {"$ref": "#/components/schemas/FieldErrors"}
    schemas.pop("ValidationError", None)
    for path_item in spec.get("paths", {}).values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if method in BODY_METHODS:
                responses.setdefault("413", {"description": "Request body over the size limit."})
                if "requestBody" in operation:
                    responses.setdefault("422", {"description": "Invalid body or field: each error names its field."})
            for status, response in responses.items():
                model = ERROR_MODELS.get(int(status)) if status.isdigit() else None
                if model is not None and "content" not in response:
                    response["content"] = _ref(model.__name__)
    return spec
