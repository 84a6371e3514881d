"""The integration API's routes (FastAPI); its OpenAPI 3 document is at /openapi.json, the
interactive documentation at /docs.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations, and they name
dependencies made inside `build`.
"""

import logging
import math
from importlib.metadata import version
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kepmta.api import verify_page
from kepmta.api.directory import Directory
from kepmta.api.errors import ApiError
from kepmta.api.models import (
    AcceptedOut,
    CheckAnswerOut,
    CheckIn,
    CheckOut,
    DirectoryEntryOut,
    DirectoryOut,
    ErrorBody,
    EventOut,
    EvidenceItem,
    EvidenceListOut,
    QuotaOut,
    StatusOut,
)
from kepmta.api.ratelimit import Buckets
from kepmta.api.service import ApiService
from kepmta.api.tokens import Principal, TokenRefused, TokenStore
from kepmta.config import ApiPolicy

log = logging.getLogger(__name__)

# What a JSON request body may be; the message upload and the verification page have their own.
JSON_BODY_MAX = 1024 * 1024
_OWN_LIMITS = ("/v1/messages", "/dogrula")


def _error(status: int, code: str, message: str, message_tr: str, **more: Any) -> JSONResponse:
    return JSONResponse(
        ErrorBody(code=code, message=message, message_tr=message_tr, **more).model_dump(exclude_none=True),
        status_code=status,
    )


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody} for s in statuses}


class BodyLimit:
    """Refuses a request body larger than `limit` (413), declared or streamed, except on the paths
    that stream theirs to a file under their own limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_OWN_LIMITS):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ApiError(*_too_large_text(limit))
            return message

        await self.app(scope, counted, send)


def _too_large_text(limit: int) -> tuple[int, str, str, str]:
    return (
        413,
        "body_too_large",
        f"the request body is larger than {limit} bytes",
        f"istek gövdesi {limit} bayttan büyük",
    )


def _too_large(limit: int) -> JSONResponse:
    status, code, text, text_tr = _too_large_text(limit)
    return _error(status, code, text, text_tr)


def build(
    api: ApiService, tokens: TokenStore, directory: Directory, policy: ApiPolicy, page: verify_page.VerifyPage
) -> FastAPI:
    app = FastAPI(
        title="kepmta integration API",
        version=version("kepmta"),
        description="KEP (registered e-mail) for programs: submit an S/MIME-signed message, follow "
        "its evidence, download the evidence, see the mailbox's quota, look up the KEP directory. "
        "Every request carries an API token (`kepmta tokens create`) as `Authorization: Bearer "
        "<token>`. Every error is JSON with a stable `code`, and English and Turkish text.",
    )
    app.add_middleware(BodyLimit, limit=JSON_BODY_MAX)
    buckets = Buckets(policy.burst, policy.requests_per_minute)
    bearer = HTTPBearer(auto_error=False, description="an API token from `kepmta tokens create`")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = JSONResponse(exc.body(), status_code=exc.status)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        text = {
            400: f"the request could not be read: {exc.detail}",
            404: "no such path",
            405: "this path does not take this method",
        }.get(exc.status_code, str(exc.detail))
        text_tr = {
            400: "istek okunamadı",
            404: "böyle bir yol yok",
            405: "bu yol bu yöntemi kabul etmez",
        }.get(exc.status_code, text)
        response = _error(exc.status_code, code, text, text_tr)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "problem": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return _error(
            422,
            "invalid_request",
            "the request is not as the API describes it (see details and /openapi.json)",
            "istek API'nin tarif ettiği biçimde değil (ayrıntılara ve /openapi.json'a bakın)",
            details=details,
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal error", "sunucu hatası")

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        try:
            who = await tokens.authenticate(credentials.credentials if credentials else None)
        except TokenRefused as e:
            status = 403 if e.why.value in ("account_not_active", "not_an_operator") else 401
            # RFC 6750 §3: a refused bearer token is answered with WWW-Authenticate.
            raise ApiError(
                status, e.why.value, e.text, e.text_tr, headers={"WWW-Authenticate": "Bearer"}
            ) from None
        wait = buckets.take(who.token_id)
        if wait is not None:
            raise ApiError(
                429,
                "rate_limited",
                "too many requests with this token; try again after Retry-After seconds",
                "bu anahtarla çok fazla istek yapıldı; Retry-After saniye sonra yeniden deneyin",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        return who

    Who = Annotated[Principal, Depends(principal)]
    common = _errors(400, 401, 403, 429)

    @app.post(
        "/v1/messages",
        status_code=201,
        response_model=AcceptedOut,
        tags=["messages"],
        summary="Submit an S/MIME-signed KEP message",
        description="The body is the RFC 5322 message, already S/MIME signed by the sender's "
        "qualified certificate, with CRLF line endings, as it would follow SMTP DATA. Its "
        "recipients are the addresses of its To and Cc headers. The same policy as SMTP "
        "submission decides, with the same refusals and evidence; a refusal names the SMTP codes "
        "and the ETSI reason. All or nothing: if any recipient is refused, nothing is sent (422, "
        "`details` names each). A Content-Length over the policy's size limit is refused before "
        "the body is read; a body streamed past it is refused when it passes it.",
        responses={
            **common,
            **_errors(413, 422, 503),
            201: {"description": "accepted: the SubmissionAcceptance evidence is on disk"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                # Any content type is taken; message/rfc822 (RFC 2046 §5.2.1) says what it is.
                "content": {
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in ("message/rfc822", "application/octet-stream")
                },
            }
        },
    )
    async def submit(request: Request, who: Who) -> AcceptedOut:
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        try:
            accepted = await api.submit(who, request.stream(), declared)
        except ApiError:
            raise
        except Exception:
            # As SMTP's 451 4.3.0 after DATA: nothing was accepted; the client keeps the message.
            log.exception("message from %s not accepted", who.acting_as.address)
            raise ApiError(
                503,
                "try_later",
                "the message was not accepted because of a problem at the server; try again later",
                "ileti sunucudaki bir sorun nedeniyle kabul edilmedi; daha sonra yeniden deneyin",
                headers={"Retry-After": "60"},
            ) from None
        return AcceptedOut.of(accepted)

    @app.get(
        "/v1/messages/{message_id}",
        response_model=StatusOut,
        tags=["messages"],
        summary="A message's status: its evidence so far, for the message and for each recipient",
        responses={**common, **_errors(404)},
    )
    async def status(message_id: str, who: Who) -> StatusOut:
        return StatusOut.of(await api.status(who, message_id))

    @app.get(
        "/v1/messages/{message_id}/evidence",
        response_model=EvidenceListOut,
        tags=["evidence"],
        summary="The evidence of a message, each with where its .p7m is downloaded",
        responses={**common, **_errors(404)},
    )
    async def evidence_list(message_id: str, who: Who) -> EvidenceListOut:
        found = await api.status(who, message_id)
        base = f"/v1/messages/{quote(message_id, safe='@')}"
        return EvidenceListOut(
            message_id=found.message_id,
            evidence=[
                EvidenceItem(
                    **EventOut.of(e).model_dump(), href=f"{base}/evidence/{quote(e.evidence_id, safe='@')}"
                )
                for e in found.events
            ],
            bundle=f"{base}/bundle",
        )

    @app.get(
        "/v1/messages/{message_id}/evidence/{evidence_id}",
        tags=["evidence"],
        summary="One evidence as its signed .p7m (CMS, DER), verifiable with openssl",
        response_class=Response,
        responses={
            **common,
            **_errors(404),
            200: {"content": {"application/pkcs7-mime": {"schema": {"type": "string", "format": "binary"}}}},
        },
    )
    async def evidence_file(message_id: str, evidence_id: str, who: Who) -> Response:
        found, der = await api.evidence(who, message_id, evidence_id)
        return Response(
            der,
            media_type="application/pkcs7-mime",
            headers={"Content-Disposition": f'attachment; filename="{found.event.value}.p7m"'},
        )

    @app.get(
        "/v1/messages/{message_id}/bundle",
        tags=["evidence"],
        summary="The message's evidence bundle (ZIP), as `kepmta evidence export` writes it",
        response_class=Response,
        responses={
            **common,
            **_errors(404),
            200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
        },
    )
    async def evidence_bundle(message_id: str, who: Who) -> Response:
        data = await api.bundle(who, message_id)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="kanit.zip"'},
        )

    @app.get(
        "/v1/quota",
        response_model=QuotaOut,
        tags=["mailbox"],
        summary="The mailbox's quota: of the token's account, or of the entity its operator acts for",
        responses=common,
    )
    async def quota(who: Who) -> QuotaOut:
        usage = await api.quota(who)
        return QuotaOut(
            address=who.acting_as.address, used=usage.used, limit=usage.limit, percent=usage.percent
        )

    @app.get(
        "/v1/directory",
        response_model=DirectoryOut,
        tags=["directory"],
        summary="Search the KEP directory by name, MERSİS number or address",
        description="Legal entities are always listed; persons only if they opted in. Case and "
        "Turkish letters are ignored; 16 digits are a MERSİS number, matched exactly.",
        responses={**common, **_errors(422)},
    )
    async def directory_search(
        who: Who, q: Annotated[str, Query(min_length=1, max_length=300, description="what to look for")]
    ) -> DirectoryOut:
        found = await directory.search(q, policy.search_results)
        return DirectoryOut(entries=[DirectoryEntryOut.of(e) for e in found])

    @app.post(
        "/v1/directory/check",
        response_model=CheckOut,
        tags=["directory"],
        summary="Bulk check: is each address a listed KEP address, and is it active?",
        description="An address with no account and a person who did not opt in are answered "
        "alike: not listed.",
        responses={**common, **_errors(413, 422)},
    )
    async def directory_check(body: CheckIn, who: Who) -> CheckOut:
        if len(body.addresses) > policy.bulk_check_max:
            raise ApiError(
                422,
                "too_many_addresses",
                f"at most {policy.bulk_check_max} addresses may be checked at once",
                f"tek seferde en çok {policy.bulk_check_max} adres denetlenebilir",
            )
        answers = await directory.check(body.addresses)
        return CheckOut(results=[CheckAnswerOut.of(a) for a in answers])

    page.route(app)
    return app
