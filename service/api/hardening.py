"""Input that cannot hurt the service: a body limit, JSON-only writes, no NaN, short error replies.

:class:`InputGuard` is a pure ASGI middleware in front of everything (routes and dashboard). For a
request that carries a body it reads the body first, at most ``max_body_bytes`` of it (413 as soon as
``Content-Length`` or the streamed bytes pass the limit, before anything parses it), refuses a
write whose ``Content-Type`` is not ``application/json`` (415: no cross-site HTML form can do
anything, even with auth off), and refuses NaN and Infinity anywhere in a JSON body (422; Python's
``json`` accepts them, JSON does not). The checked body is then replayed to the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

import h11

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["COMMON_RESPONSES", "ERROR_RESPONSES", "ErrorGuard", "ErrorOut", "HeaderTimeoutH11", "InputGuard", "http_protocol", "ValidationErrorOut", "excerpt", "owner_only", "json_error", "validation_error_handler"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EXCERPT_CHARS = 80
MAX_ERRORS_SHOWN = 10  # a 422 quotes at most this many errors and counts the rest
MAX_MSG_CHARS = 400

log = logging.getLogger("regsearch")


class ErrorOut(BaseModel):
    """Every error but a validation error: one readable sentence."""

    detail: str


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorOut(BaseModel):
    """A 422: each invalid field, where it is, why, and a short excerpt of what was sent."""

    detail: list[ValidationErrorItem]


#: what every route can answer, documented on every operation (``FastAPI(responses=COMMON_RESPONSES)``)
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A malformed request (e.g. an invalid Content-Length header)."},
    405: {"model": ErrorOut, "description": "The path exists, the method does not; the Allow header lists those that do."},
    413: {"model": ErrorOut, "description": "The request body is larger than the server's limit."},
    500: {"model": ErrorOut, "description": "An unexpected error, logged on the server; the connection is closed (Connection: close)."},
}

#: documented on every /v1 operation besides COMMON_RESPONSES (``include_router(..., responses=ERROR_RESPONSES)``)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or an unknown or revoked one."},
    403: {"model": ErrorOut, "description": "The token's scope is too small (read < write < admin)."},
    404: {"model": ErrorOut, "description": "No such study (or no best config yet)."},
    409: {"model": ErrorOut, "description": "Conflicts with the study's state or an existing study."},
    415: {"model": ErrorOut, "description": "A request body that is not application/json."},
    422: {"model": ValidationErrorOut, "description": "Invalid input: each error names the field and the reason."},
}


def owner_only(action: str) -> dict[int | str, dict[str, Any]]:
    """The 403 of a route that changes a study (:func:`service.owners.require_owner`), documented."""
    return {403: {"model": ErrorOut, "description": "The token's scope is too small (read < write < admin), or the "
                  f"study is another owner's: only its owner or an admin may {action} it (the answer names the owner)."}}


def excerpt(value: Any) -> Any:
    """``value`` if it is a small scalar, else at most EXCERPT_CHARS characters of its JSON."""
    if value is None or isinstance(value, bool | int) and abs(value) < 10**18:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(jsonable_encoder(value), default=str, allow_nan=True)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def _clean_ctx(ctx: Any) -> dict[str, Any] | None:
    if not isinstance(ctx, dict):
        return None
    return {str(key): excerpt(value) if isinstance(value, str | int | float | bool | type(None)) else excerpt(str(value))
            for key, value in ctx.items()}


async def validation_error_handler(_request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, but never echoing more than a short excerpt of the input (nor failing on NaN)."""
    items = []
    errors = error.errors()
    for item in errors[:MAX_ERRORS_SHOWN]:
        msg = str(item.get("msg", "invalid"))
        out = {"loc": [excerpt(part) if isinstance(part, int) else excerpt(str(part)) for part in item.get("loc", ())],
               "msg": msg if len(msg) <= MAX_MSG_CHARS else msg[:MAX_MSG_CHARS] + "...",
               "type": str(item.get("type", "value_error"))}
        if "input" in item:
            out["input"] = excerpt(item["input"])
        if item.get("ctx"):
            out["ctx"] = _clean_ctx(item["ctx"])
        items.append(out)
    if len(errors) > MAX_ERRORS_SHOWN:  # e.g. many unknown keys: a few are quoted, the rest counted
        items.append({"loc": ["body"], "type": "too_many_errors",
                      "msg": f"and {len(errors) - MAX_ERRORS_SHOWN} more error(s) not shown ({len(errors)} in all)"})
    return JSONResponse({"detail": items}, status_code=422)


def json_error(status_code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:EXCERPT_CHARS]} is out of range (numbers must be finite)")
    return value


class _PayloadTooLarge(Exception):
    pass


class InputGuard:
    """Body limit, JSON-only writes and finite numbers, before the app sees the request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_length = _header(scope, b"content-length")
        content_type = _header(scope, b"content-type")
        has_body = bool(content_type) or (content_length not in (None, "0")) or _header(scope, b"transfer-encoding") is not None
        if scope["method"] not in WRITE_METHODS and not has_body:
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        if content_length is not None:
            if not content_length.isdigit():
                await json_error(400, "invalid Content-Length header")(scope, receive, send)
                return
            if int(content_length) > limit:
                await self._too_large(scope, receive, send)
                return
        if scope["method"] in WRITE_METHODS and has_body:
            media_type = (content_type or "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                await json_error(
                    415,
                    f"request bodies must be application/json, not {media_type or 'untyped'!r}",
                )(scope, receive, send)
                return
        try:
            body = await self._read(receive, limit)
        except _PayloadTooLarge:
            await self._too_large(scope, receive, send)
            return
        if body and (content_type or "").split(";", 1)[0].strip().lower() == "application/json":
            problem = self._non_finite(body)
            if problem:
                await JSONResponse(
                    {"detail": [{"loc": ["body"], "msg": problem, "type": "json_invalid", "input": excerpt(body.decode("utf-8", "replace"))}]},
                    status_code=422,
                )(scope, receive, send)
                return
        await self.app(scope, self._replay(body, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = json_error(
            413,
            f"request body larger than {self.max_body_bytes} bytes (REGSEARCH_MAX_BODY_BYTES)",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    @staticmethod
    async def _read(receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _PayloadTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _non_finite(body: bytes) -> str | None:
        """Why the JSON body holds a non-finite number or is not text, or None (other invalid JSON: the app's 422)."""
        try:
            json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_finite_int)
        except UnicodeDecodeError:
            return "the body is not UTF-8 text (JSON must be)"
        except ValueError as error:
            message = str(error)
            if "valid JSON number" in message or "numbers must be finite" in message:
                return message.split(":", 1)[0] if ": line" in message else message
        except RecursionError:
            return "JSON nested too deeply"
        return None

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


class ErrorGuard:
    """The outermost layer of the app: HEAD on every GET route, and never an error that breaks the next request.

    HEAD is served as the GET it stands for with the body left out (so every GET route, the
    dashboard's included, answers it, headers and all). An exception that escapes the app before the
    answer started becomes a short JSON 500 with ``Connection: close`` (the traceback goes to the log,
    not to the client): the client then knows the connection ends and opens a new one. Without it the
    server dropped the kept-alive connection after its own 500, and the client's next request failed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def guarded(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            elif head and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, receive, guarded)
        except Exception:
            if started:
                raise  # the server closes the connection: nothing else can end a half-sent answer
            log.exception("unhandled error in %s %s", scope["method"], excerpt(scope.get("path", "")))
            await json_error(500, "internal error (logged on the server); the request may be retried",
                             headers={"Connection": "close"})(scope, receive, guarded)


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request's headers within
    ``header_timeout_s`` of opening or of its previous answer (uvicorn has no such timeout: its
    ``timeout_keep_alive`` ends once any byte arrives, so a client that never finishes its headers held
    the connection for ever). Build one with :func:`http_protocol`."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = None if self.transport.is_closing() else \
            self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # no whole request yet
            self.logger.info("closing a connection that sent no complete request headers within %ss", self.header_timeout_s)
            self.conn.send(h11.ConnectionClosed())
            self.transport.close()


def http_protocol(header_timeout_s: float) -> type[HeaderTimeoutH11]:
    """uvicorn's ``http=`` for this server (REGSEARCH_HEADER_TIMEOUT_S)."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout_s": header_timeout_s})


def _finite_int(text: str) -> int:
    if len(text) > 4000:  # Python refuses longer integers anyway; say so as a 422, not a 500
        raise ValueError(f"{text[:EXCERPT_CHARS]}... is out of range (numbers must be finite)")
    return int(text)
