"""The embedded API-Bridge: the public API-Bridge's REST routes on FastAPI, over a `Store`.

``modbatt api-bridge serve`` runs it on uvicorn. Every client mistake gets a 4xx JSON body
``{"error": ..., "detail": [...]}`` that says what is wrong; nothing a client sends produces a
500 or a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path as FilePath
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from modbatt import __version__
from modbatt.api_bridge import models
from modbatt.api_bridge.access import Access
from modbatt.api_bridge.store import ForbiddenError, Store, StoreError

log = logging.getLogger("modbatt.api_bridge.server")

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted; a bigger one gets 413 before it is parsed."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": models.ErrorBody, "description": description}
    for status, description in {
        400: "The request is malformed",
        401: "Missing or wrong bearer token (when the server runs with --token)",
        403: "The creator may not act on this record",
        404: "Unknown id",
        409: "The current state does not allow this change",
        413: "Request body too large",
        422: "The request body or a parameter is invalid",
    }.items()
}

ComponentIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
LctIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,160}$")]


def _error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(status_code=status, content=body)


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, whether or not they declare a length."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body (up to the limit), then hand it to the application."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(413, f"request body over {self.limit} bytes")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


BEARER = HTTPBearer(
    auto_error=False,
    description="Required on /api/v1 when the server runs with tokens: with per-creator tokens "
    "(--tokens), a request acts only as its token's creator.",
)


class StoreAuthError(StoreError):
    """Missing or wrong bearer token."""

    status = 401


Caller = str | None
"""The creator a request acts as, from its token; None when it may act as any creator."""


def _authenticate(access: Access) -> Callable[..., None]:
    """The router-wide dependency of a server with tokens: finds the caller or answers 401.

    Built on `HTTPBearer`, so the schema declares bearer auth exactly when it is required.
    """

    def authenticate(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        try:
            request.state.caller = access.caller(
                None if credentials is None else credentials.credentials
            )
        except PermissionError:
            raise StoreAuthError from None

    return authenticate


def _caller(request: Request) -> Caller:
    """The creator this request acts as (set by `_authenticate`; fails closed without it)."""
    if request.app.state.access.needs_token and not hasattr(request.state, "caller"):
        raise StoreAuthError
    caller: Caller = getattr(request.state, "caller", None)
    return caller


CallerDep = Annotated[Caller, Depends(_caller)]


def _acting_as(caller: Caller, creator: str) -> None:
    """A request names a creator: with per-creator tokens, it must be its token's."""
    if caller is not None and caller != creator:
        raise ForbiddenError(f"this token is {caller!r}'s: it cannot act as {creator!r}")


def create_app(store: Store, access: Access | None = None) -> FastAPI:
    """The API-Bridge application over `store`, open to whom `access` says (default: open)."""
    access = access or Access()
    app = FastAPI(
        title="modbatt API-Bridge",
        version=__version__,
        description="The Web4 API-Bridge REST contract (components, LCTs), persisted in "
        "SQLite with a hash-chained ledger. Fields and routes marked x-modbatt-extension "
        "are not part of the public API-Bridge.",
    )

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, exc: StoreError) -> JSONResponse:
        message = "missing or wrong bearer token" if isinstance(exc, StoreAuthError) else str(exc)
        return _error(exc.status, message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {
                "loc": [str(part) for part in e.get("loc", ())],
                "msg": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in detail[:5])
        return _error(422, f"invalid request: {summary}", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's only own 400 is a body it could not decode (not UTF-8, say): that is a
            # malformed body, which the API answers with 422 and a detail, like bad JSON.
            detail = [{"loc": ["body"], "msg": str(exc.detail), "type": "body_undecodable"}]
            return _error(422, f"invalid request: body: {exc.detail}", detail)
        # Keep the exception's headers: a 405 must say what is allowed (RFC 9110 §15.5.6).
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")  # the traceback stays in the server's log
        return _error(500, "internal error")

    @app.get("/health", response_model=models.Health)
    def health() -> models.Health:
        return models.Health(status="healthy", version=__version__)

    # The schema declares bearer auth only when the server requires it: an open server's
    # schema says so, and a client generated from it sends no token.
    responses = dict(ERROR_RESPONSES)
    if not access.needs_token:
        del responses[401]
    # Every route authenticates (router-wide, before its own parameters); the ones that name
    # a creator also take the caller it found.
    app.state.access = access
    guard = [Depends(_authenticate(access))] if access.needs_token else []
    api = APIRouter(prefix="/api/v1", dependencies=guard, responses=responses)

    @api.post("/components/register", response_model=models.Component)
    def register(body: models.RegisterRequest, caller: CallerDep) -> models.Component:
        _acting_as(caller, body.creator)
        record, existing = store.register(body.creator, body.component_data, body.context)
        return _component(record, already_registered=existing)

    @api.get("/components/{component_id}", response_model=models.Component)
    def get_component(component_id: ComponentIdPath) -> models.Component:
        return _component(store.component(component_id))

    @api.get("/components/{component_id}/identity", response_model=models.Identity)
    def identity(component_id: ComponentIdPath) -> models.Identity:
        record = store.component(component_id)
        return models.Identity(
            component_id=record["component_id"],
            component_identity=record["component_id"],
            creator=record["creator"],
            status=record["status"],
            txhash=record["txhash"],
        )

    @api.post("/components/{component_id}/verify", response_model=models.Verification)
    def verify(
        component_id: ComponentIdPath,
        body: models.VerifyRequest,
        caller: CallerDep,
    ) -> models.Verification:
        _acting_as(caller, body.verifier)
        return models.Verification(
            **store.verify_component(component_id, body.verifier, body.context)
        )

    @api.post("/lct/create", response_model=models.LctCreated)
    def create_lct(
        body: models.LctCreateRequest,
        caller: CallerDep,
        idempotency_key: Annotated[
            str | None,
            Header(
                max_length=128,
                description="Retries with the same key return the same LCT (modbatt extension).",
            ),
        ] = None,
    ) -> models.LctCreated:
        _acting_as(caller, body.creator)
        request_hash = hashlib.sha256(
            json.dumps(body.model_dump(), sort_keys=True).encode()
        ).hexdigest()
        record = store.create_lct(
            body.creator,
            body.component_a,
            body.component_b,
            body.context,
            body.proxy_id,
            replaces=body.replaces,
            idempotency=None if idempotency_key is None else (idempotency_key, request_hash),
        )
        return models.LctCreated(**record)

    @api.get("/lct/{lct_id}", response_model=models.LctRecord)
    def get_lct(lct_id: LctIdPath, caller: CallerDep) -> models.LctRecord:
        record = store.lct(lct_id)
        if caller is not None and record["creator"] != caller:
            raise ForbiddenError(f"LCT {lct_id!r} belongs to another creator")
        return models.LctRecord(**record)

    @api.get(
        "/lct/{lct_id}/keys",
        response_model=models.LctKeysResponse,
        openapi_extra=models.EXTENSION,
        description="modbatt extension: an active LCT's four key halves again, for its "
        "creator only (key recovery, seed Workflow C).",
    )
    def lct_keys(
        lct_id: LctIdPath, creator: models.Creator, caller: CallerDep
    ) -> models.LctKeysResponse:
        _acting_as(caller, creator)
        return models.LctKeysResponse(**store.lct_keys(lct_id, creator))

    @api.put("/lct/{lct_id}/status", response_model=models.LctStatusChanged)
    def set_status(
        lct_id: LctIdPath, body: models.LctStatusRequest, caller: CallerDep
    ) -> models.LctStatusChanged:
        _acting_as(caller, body.creator)
        return models.LctStatusChanged(
            **store.set_lct_status(lct_id, body.creator, body.status, body.context)
        )

    app.include_router(api)
    return app


def _component(record: dict[str, Any], already_registered: bool = False) -> models.Component:
    return models.Component(
        component_id=record["component_id"],
        component_identity=record["component_id"],
        lct_id=record["lct_id"],
        status=record["status"],
        txhash=record["txhash"],
        creator=record["creator"],
        component_data=record["component_data"],
        context=record["context"],
        created_at=record["created_at"],
        already_registered=already_registered,
    )


def build(db: FilePath, access: Access | None = None, head: FilePath | None = None) -> ASGIApp:
    """The ASGI application uvicorn serves: the API behind the body-size limit."""
    return BodyLimit(create_app(Store(db, head=head), access))


def serve(db: FilePath, host: str, port: int, access: Access, head: FilePath | None = None) -> None:
    """Run the API-Bridge until interrupted, after saying where and to whom."""
    access.check_address(host)
    app = build(db, access, head)
    where = f"[{host}]" if ":" in host else host
    print(  # the startup line: what a technician reads first
        f"modbatt API-Bridge {__version__} on http://{where}:{port}, database {db}; "
        f"access: {access.describe()}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
