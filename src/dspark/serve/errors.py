"""OpenAI-style errors for `dspark serve`: one exception type and the JSON body every failure gets.

Every refusal is `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status, the shape the
`openai` client turns into `BadRequestError`, `AuthenticationError`, `RateLimitError`, ... Handlers for
FastAPI's own errors (unknown route, wrong method, body validation) and for anything unexpected are
installed by `install_handlers`, so no request ever gets a bare traceback or Starlette's `{"detail"}`.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from dspark.serve.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger(__name__)

# OpenAI's error types by status (its API uses invalid_request_error for all 4xx but auth and limits).
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        info = ErrorInfo(message=self.message, type=TYPES.get(self.status, "invalid_request_error"), param=self.param,
                         code=self.code)
        return ErrorResponse(error=info).model_dump()


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


def from_validation(exc: ValidationError) -> APIError:
    """The first problem pydantic found, as a 400 naming the field (`messages.0.role`)."""
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    # drop the union-member tags pydantic adds to locations (`stop.str`, `prompt.list[int]`)
    loc = [str(p) for p in first.get("loc", ()) if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool")))]
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return APIError(400, f"{param + ': ' if param else ''}{first.get('msg', 'invalid value')}{more}", param, "invalid_value")


def install_handlers(app: Any) -> None:
    """Route every error FastAPI or Starlette can raise through the OpenAI error body."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    async def on_api_error(request: Any, exc: APIError) -> JSONResponse:
        return respond(exc)

    async def on_http(request: Any, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return respond(APIError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {})))

    async def on_validation(request: Any, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return respond(APIError(400, f"{param + ': ' if param else ''}{first.get('msg', 'invalid request')}", param,
                                "invalid_value"))

    async def on_unexpected(request: Any, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return respond(APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
