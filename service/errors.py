"""Domain errors, in one place.

Service code raises a `ServiceError` subclass; one handler turns it into a JSON response.
Routes never build error bodies by hand. Two body shapes exist:

- `{"detail": "message"}` for every error except validation;
- `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}` for 422, the same shape as
  FastAPI's own request validation errors, so a client parses one format (a spec rejected by
  `celif_core.spec.validate_spec` is reported this way, its `loc` prefixed with `"body"`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from celif_core.spec import SpecError
from jobstore.artifacts import StoreUnavailable

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status_code: int = 500
    default_message: str = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.default_message
        self.headers = headers
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"detail": self.message}


class BadRequest(ServiceError):
    status_code = 400
    default_message = "bad request"


class Unauthorized(ServiceError):
    status_code = 401
    default_message = "missing or invalid bearer token"

    def __init__(self, message: str | None = None):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status_code = 404
    default_message = "not found"


class Conflict(ServiceError):
    status_code = 409
    default_message = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    default_message = "request body too large"


class Unprocessable(ServiceError):
    """422 naming the offending field, in FastAPI's validation-error shape."""

    status_code = 422
    default_message = "invalid input"

    def __init__(
        self, message: str, *, loc: Sequence[str | int] = (), type: str = "value_error"
    ) -> None:
        super().__init__(message)
        self.errors = [{"loc": list(loc), "msg": message, "type": type}]

    @classmethod
    def from_errors(cls, errors: list[dict[str, Any]]) -> Unprocessable:
        exc = cls(errors[0]["msg"] if errors else "invalid input")
        exc.errors = errors
        return exc

    def body(self) -> dict[str, Any]:
        return {"detail": self.errors}


class ServiceUnavailable(ServiceError):
    status_code = 503
    default_message = "service unavailable"


def spec_error_to_unprocessable(exc: SpecError) -> Unprocessable:
    """A spec error as a 422 whose `loc` starts with "body" (the spec is the request body)."""
    return Unprocessable.from_errors(
        [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors]
    )


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _service_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)  # registered for ServiceError only
    return error_response(exc)


async def _spec_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError)  # registered for SpecError only
    return error_response(spec_error_to_unprocessable(exc))


async def _data_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """The last line of defence: a value the database refuses (a NUL byte, a number beyond
    bigint) that no check before it caught is the client's input, not a server failure. Every
    route validates its input first; tests/security probes that none reaches this."""
    log.warning("database refused a request value: %s", str(exc).splitlines()[0][:300])
    return error_response(
        Unprocessable(
            "a value in the request cannot be stored or compared by the database "
            "(a NUL byte, or a number out of range)",
            loc=("request",),
        )
    )


async def _store_unavailable_handler(_request: Request, exc: Exception) -> JSONResponse:
    """The artifact store (jobstore.artifacts) could not be reached: the request may pass
    later, so a 503 with Retry-After, not a 500."""
    log.warning("artifact store unavailable: %s", str(exc).splitlines()[0][:300])
    return error_response(
        ServiceUnavailable(
            "the artifact store is unavailable; try again later", headers={"Retry-After": "5"}
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(StoreUnavailable, _store_unavailable_handler)
    app.add_exception_handler(SpecError, _spec_error_handler)
    app.add_exception_handler(DataError, _data_error_handler)
