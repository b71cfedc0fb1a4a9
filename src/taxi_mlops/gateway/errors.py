"""Errors a client can act on: 422 naming each bad field, 503 naming the dependency,
401/403 for a missing/wrong admin token, 404/409 for the control plane.

Registered by ``app.register_exception_handlers``; ``DependencyDown`` is raised by the
``Predictor``, the control-plane errors by ``control.Control`` (no HTTP in either) and turned
into responses here.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class DependencyDown(Exception):
    """A dependency (``feature_store`` or ``model_server``) failed or timed out."""

    def __init__(self, dependency: str, message: str):
        super().__init__(message)
        self.dependency, self.message = dependency, message


def validation_errors(exc: RequestValidationError) -> list[dict]:
    """Pydantic's errors as ``{"field", "message"}``: the field path without the ``body`` root."""
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        message = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            field, message = "body", "request body is not valid JSON"
        errors.append({"field": field, "message": message})
    return errors


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": validation_errors(exc)})


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
    from taxi_mlops.gateway import control
    from taxi_mlops.security import AuthError

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(DependencyDown, dependency_down)
    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(control.InvalidField, invalid_field)
    app.add_exception_handler(control.NotFound, not_found)
    app.add_exception_handler(control.Conflict, conflict)
