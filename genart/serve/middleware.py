"""What wraps the routes of the HTTP API: the deadline, size and API-key middleware, and the one place where
errors become JSON.

Every error the API returns is an :class:`~genart.serve.errors.APIError` mapped to JSON here; bad input never
becomes a 5xx, and a bug becomes a 500 whose body says nothing about internals.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from genart.serve.errors import APIError, DeadlineExceeded, Overloaded, PayloadTooLarge, Unauthorized

__all__ = [
    "PUBLIC_PATHS",
    "DeadlineMiddleware",
    "LimitsMiddleware",
    "current_request_id",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger("genart.serve.api")

PUBLIC_PATHS = frozenset({"/health"})


def error_response(error: APIError, request_id: str | None = None) -> JSONResponse:
    """The JSON body and status of ``error``."""
    body = error.to_dict()
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=error.status)


def current_request_id() -> str:
    """Serve's own request id (also in its access log and the X-Request-Id header), else a fresh one."""
    try:
        from ray.serve import context as serve_context

        # Ray's own accessor is private (Serve has no public one for the request id): keep its use here only.
        rid = serve_context._get_serve_request_context().request_id
    except Exception:  # outside a Serve request
        rid = ""
    return rid or uuid.uuid4().hex


class DeadlineMiddleware:
    """Answers in JSON before Serve would in plain text: 503 ``overloaded`` past ``max_in_flight`` requests
    at once, 504 ``deadline_exceeded`` past ``request_deadline_s`` (both from ``app.state.limits``).

    ``/health`` is neither counted nor timed, so that probes still see an overloaded but live replica.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        limits = getattr(scope["app"].state, "limits", {})
        deadline, most = limits.get("request_deadline_s"), limits.get("max_in_flight")
        if most and self.in_flight >= most:
            response = error_response(Overloaded(f"the service is working on {most} requests; retry shortly"))
            response.headers["Retry-After"] = "1"
            await response(scope, receive, send)
            return
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.in_flight += 1
        try:
            await asyncio.wait_for(self.app(scope, receive, tracked_send), timeout=deadline)
        except TimeoutError:
            log.warning("deadline of %s s passed on %s", deadline, scope.get("path"))
            if not started:
                error = DeadlineExceeded(
                    f"the request took longer than the {deadline} s deadline; retry later"
                )
                await error_response(error)(scope, receive, send)
        finally:
            self.in_flight -= 1


class LimitsMiddleware:
    """The two things Ray Serve lacks: a request-size cap (413, also for chunked bodies) and an API key.

    It reads the limits from ``app.state.limits`` (set by the ingress) so that ``reconfigure`` changes them.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = getattr(scope["app"].state, "limits", {})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        api_key = limits.get("api_key")
        if api_key and scope.get("path") not in PUBLIC_PATHS:
            given = (
                headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
            )
            if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
                await error_response(
                    Unauthorized("missing or wrong API key: send it in the X-API-Key header")
                )(scope, receive, send)
                return
        cap = int(limits.get("max_upload_bytes", 0))
        if not cap:
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"request body is larger than the {cap}-byte limit")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await error_response(too_large)(scope, receive, send)
            return
        await self._capped(scope, receive, send, cap, too_large)

    async def _capped(self, scope: dict, receive: Any, send: Any, cap: int, too_large: APIError) -> None:
        """Pass the request on, cutting its body at ``cap`` bytes and answering 413 instead of the app."""
        received = 0
        exceeded = False

        async def limited_receive() -> dict:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    exceeded = True  # stop reading; the app's answer to a cut body is replaced below
                    return {"type": "http.disconnect"}
            return message

        started = False

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if exceeded:
                if not started:
                    started = True
                    await error_response(too_large)(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _count(request: Request, error: APIError) -> None:
    ingress = getattr(request.app.state, "ingress", None)
    if ingress is not None:
        ingress.count_error(error.code, request.url.path)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    _count(request, exc)
    log.info("refused %s: %s", request.url.path, exc.message, extra={"status": exc.status, "code": exc.code})
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
    )
    error = APIError(f"invalid request: {problems}", status=422, code="invalid_request")
    _count(request, error)
    return error_response(error)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    error = APIError(str(exc.detail), status=exc.status_code, code=code)
    _count(request, error)
    return error_response(error)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not bad input: logged with its traceback, answered as JSON without internals."""
    log.exception("unhandled error on %s", request.url.path)
    error = APIError("internal error; it has been logged", status=500, code="internal")
    _count(request, error)
    return error_response(error, request_id=current_request_id())


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to JSON on ``app``, counting each in the ingress' metrics when there is one."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
