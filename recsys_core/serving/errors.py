"""One error body for every 4xx/5xx the service answers, and the handlers that produce it.

FastAPI's default 422 echoes the offending input, which cannot be serialised when it is NaN or Infinity (a 500),
and its shape (`detail` an array) differed from the handlers' own errors (`detail` a string). Here `detail` is always
a sentence and `errors` lists where and why, never the input.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: body, query or path, then the field")
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)


_DESCRIPTIONS = {
    400: "Malformed request (not JSON, nested too deeply)",
    404: "No such route or item",
    405: "Method not allowed on this route",
    413: "Request body above the size limit",
    422: "Request well-formed but invalid (types are strict, values bounded)",
}
ERROR_RESPONSES: dict[int | str, dict] = {code: {"model": ErrorBody, "description": text} for code, text in _DESCRIPTIONS.items()}
# Routes behind an API key (recsys_core.serving.auth) also answer these.
KEYED_RESPONSES: dict[int | str, dict] = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown one"},
    403: {"model": ErrorBody, "description": "The API key lacks the route's scope"},
    429: {"model": ErrorBody, "description": "Over the rate limit of the key (or, unkeyed, of the client address)",
          "headers": {"Retry-After": {"description": "seconds until a request is allowed again", "schema": {"type": "integer"}}}},
}
# For routes whose success is not JSON: FastAPI would file the error model under their media type.
JSON_ERROR_REFS: dict[int | str, dict] = {
    code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for code, text in _DESCRIPTIONS.items()
}


def _body(status: int, detail: str, errors: list[ErrorItem] = (), headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=detail, errors=list(errors)).model_dump(), status_code=status, headers=headers)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    return _body(error.status_code, str(error.detail), headers=getattr(error, "headers", None))


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Invalid JSON is a 400 naming the position; anything else a 422 listing every field, without the input."""
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return _body(400, f"body is not valid JSON: {reason} at position {first['loc'][-1]}")
    items = [ErrorItem(loc=[str(p) if not isinstance(p, int) else p for p in e.get("loc", ())], msg=str(e.get("msg", "")),
                       type=str(e.get("type", ""))) for e in errors]  # fmt: skip
    where = ", ".join(".".join(map(str, item.loc)) for item in items[:5])
    return _body(422, f"invalid request: {where}", items)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """A bug, not an input: logged with its traceback, answered in the same body with the request id to look for."""
    request_id = request.scope.get("state", {}).get("request_id")
    log.error("unhandled error in request %s", request_id, exc_info=error)
    return _body(500, f"internal error (request id {request_id})")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
