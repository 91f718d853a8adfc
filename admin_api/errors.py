"""One exception tree, mapped once at the boundary: `{"error": {"code", "message", "correlation_id"}}`.

Messages are the exception classes' own texts (never a value from the request or the data); a validation
error names the fields at fault, not what was sent; anything unexpected is `internal.error` with no detail.
"""

from __future__ import annotations

import logging
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicom_node.core.errors import DicomNodeError
from dicom_node.core.observability import correlation_id
from dicom_node.services.auth import AccountLocked
from storage.errors import StorageError

logger = logging.getLogger(__name__)

STATUS_BY_CODE: Final = {
    "auth.failed": 401,
    "auth.required": 401,
    "auth.forbidden": 403,
    "auth.locked": 423,
    "auth.user_invalid": 422,
    "auth.user_exists": 409,
    "auth.last_admin": 409,
    "auth.password_wrong": 403,
    "auth.not_a_user": 409,
    "rate.limited": 429,
    "request.invalid": 422,
    "request.page_invalid": 422,
    "request.filter_invalid": 422,
    "request.not_found": 404,
    "request.method_not_allowed": 405,
    "request.conflict": 409,
    "peer.not_found": 404,
    "peer.already_exists": 409,
    "peer.invalid": 422,
    "storage.database_unavailable": 503,
}
_HTTP_CODES: Final = {404: "request.not_found", 405: "request.method_not_allowed"}


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `request.not_found`")
    message: str = Field(description="our own text: never a value from the request or the data")
    correlation_id: str = Field(description="also in the `X-Correlation-ID` header and the node's logs")


class ErrorResponse(BaseModel):
    """The one body of every failure."""

    error: ErrorDetail


class ApiError(DicomNodeError):
    """The request was refused."""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.headers = headers or {}


def error_response(
    code: str, message: str, *, status: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "correlation_id": correlation_id.get()}}
    return JSONResponse(body, status_code=status or STATUS_BY_CODE.get(code, 400), headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(AccountLocked)
    async def _locked(_: Request, exc: AccountLocked) -> JSONResponse:
        return error_response(exc.code, exc.message, headers={"Retry-After": str(exc.retry_after_seconds)})

    @app.exception_handler(DicomNodeError)
    async def _node(_: Request, exc: DicomNodeError) -> JSONResponse:
        return error_response(exc.code, exc.message)

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        return error_response(exc.code, str(exc), status=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # An unknown field's name is the caller's text (it could be anything, a patient's name
        # included): it is never echoed; declared fields are named.
        fields = sorted(
            {
                "an unknown field"
                if error.get("type") == "extra_forbidden"
                else ".".join(str(part) for part in error.get("loc", ()) if part != "body")
                for error in exc.errors()
            }
        )
        return error_response("request.invalid", f"Invalid request fields: {', '.join(fields) or 'body'}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "request.invalid")
        return error_response(
            code,
            "No such resource." if exc.status_code == 404 else "Request refused.",
            status=exc.status_code,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_error(exc)


def unexpected_error(exc: Exception) -> JSONResponse:
    """`internal.error`, logged by exception class only. The app's middleware calls this within the
    request's correlation id: Starlette runs its handler for `Exception` outside every middleware."""
    logger.error("unexpected API error", extra={"event": "api_internal_error", "reason": type(exc).__name__})
    return error_response("internal.error", "Internal error.", status=500)
