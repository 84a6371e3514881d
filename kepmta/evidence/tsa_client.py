"""An RFC 3161 client for an external time-stamp authority, over HTTP(S) (RFC 3161 §3.4).

Every token is checked before it is used: status granted, our nonce echoed, the imprint ours, the
policy the configured one, and the token signed by a TSA certificate (critical EKU timeStamping)
that chains to the configured TSA trust. A TSA that cannot give such a token raises a
`TimeStampError` subclass; callers delay the evidence (see `kepmta.events`), they never drop it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import asn1crypto.parser
import asn1crypto.tsp
from cryptography import x509

from kepmta.evidence.errors import TimeStampError, TokenFormatError
from kepmta.evidence.tsa import TimeStamper, Token, check_token

log = logging.getLogger(__name__)

QUERY_TYPE = "application/timestamp-query"  # RFC 3161 §3.4
REPLY_TYPE = "application/timestamp-reply"
_MAX_REPLY = 1 << 20  # a token with its certificates is a few kB; more is not a TSA talking
_RETRY_PAUSE = 1.0  # seconds before the second attempt, doubling after


class TsaUnavailable(TimeStampError):
    """The TSA could not be reached or did not answer with a time-stamp response (worth retrying)."""


class TsaRefused(TimeStampError):
    """The TSA answered with a status other than granted (RFC 3161 §2.4.2 PKIStatusInfo)."""

    def __init__(self, status: str, fail_info: str, text: str) -> None:
        super().__init__(f"the TSA refused the request: {status} {fail_info} {text}".strip())
        self.status = status
        self.fail_info = fail_info


class TokenPolicyError(TimeStampError):
    """The token was issued under another policy than the one configured (RFC 3161 §2.4.2)."""


class TokenNonceError(TimeStampError):
    """The token does not echo the request's nonce (RFC 3161 §2.4.2): a replayed or foreign answer."""


@dataclass(frozen=True)
class TsaSettings:
    url: str
    trust: tuple[x509.Certificate, ...]  # anchors for the TSA certificate
    policy: str | None = None  # the policy OID to request and to insist on
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0  # seconds for one whole request
    retries: int = 2  # further attempts after a failure to reach the TSA


@dataclass(frozen=True)
class _Reply:
    status: int
    content_type: str
    body: bytes


class HttpTsa(TimeStamper):
    """A `TimeStamper` asking an RFC 3161 TSA over HTTP or HTTPS."""

    def __init__(self, settings: TsaSettings) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"TSA url {settings.url!r} is not an http:// or https:// URL")
        if parts.username or parts.password:
            # Credentials in a URL end up in logs; they belong in username/password_file.
            raise ValueError("the TSA url must not carry credentials")
        self.settings = settings
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None

    async def token(self, imprint: bytes, algorithm: str = "sha256") -> Token:
        """A checked token over `imprint`, an `algorithm` digest."""
        attempts = 1 + max(0, self.settings.retries)
        pause = _RETRY_PAUSE
        for attempt in range(1, attempts + 1):
            try:
                return await self._once(imprint, algorithm)
            except TsaUnavailable as exc:
                log.warning("TSA %s attempt %d/%d failed: %s", self.settings.url, attempt, attempts, exc)
                if attempt == attempts:
                    raise
            await asyncio.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _once(self, imprint: bytes, algorithm: str) -> Token:
        nonce = secrets.randbits(63) + 1
        request = build_request(imprint, nonce, self.settings.policy, algorithm)
        reply = await self._post(request)
        if reply.status != 200:
            raise TsaUnavailable(f"HTTP {reply.status} from the TSA")
        if reply.content_type.split(";")[0].strip().lower() != REPLY_TYPE:
            raise TsaUnavailable(
                f"the TSA answered {reply.content_type or 'no content type'}, not {REPLY_TYPE}"
            )
        s = self.settings
        token = check_reply_token(parse_response(reply.body), imprint, nonce, s.policy, s.trust, algorithm)
        # check_reply_token found the token's messageImprint to be `imprint`, made with `algorithm`.
        return Token(token, algorithm, imprint)

    async def _post(self, body: bytes) -> _Reply:
        s = self.settings
        head = [
            f"POST {self._path} HTTP/1.1",
            f"Host: {self._host}" + ("" if self._port in (80, 443) else f":{self._port}"),
            f"Content-Type: {QUERY_TYPE}",
            f"Accept: {REPLY_TYPE}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if s.username is not None:
            # RFC 7617 Basic: the TSA is expected behind TLS when it asks for credentials.
            pair = f"{s.username}:{s.password or ''}".encode()
            head.append(f"Authorization: Basic {base64.b64encode(pair).decode()}")
        try:
            async with asyncio.timeout(s.timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None
                )
                try:
                    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
                    await writer.drain()
                    return await _read_reply(reader)
                finally:
                    writer.close()
        except TimeoutError:
            raise TsaUnavailable(f"no answer from the TSA within {s.timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise TsaUnavailable(f"cannot talk to the TSA: {exc}") from exc


async def _read_reply(reader: asyncio.StreamReader) -> _Reply:
    status_line = (await reader.readline()).decode("latin-1").strip()
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TsaUnavailable(f"not an HTTP response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    while line := (await reader.readline()).decode("latin-1").strip():
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length > _MAX_REPLY:
            raise TsaUnavailable(f"a {length}-byte answer is too large for a time-stamp response")
        body = await reader.readexactly(length)
    else:
        body = await reader.read(_MAX_REPLY + 1)
    if len(body) > _MAX_REPLY:
        raise TsaUnavailable("the answer is too large for a time-stamp response")
    return _Reply(int(parts[1]), headers.get("content-type", ""), body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """RFC 9112 §7.1 chunked transfer coding (trailer fields are read and ignored)."""
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()).strip():
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)  # the CRLF after each chunk
        if len(body) > _MAX_REPLY:
            raise TsaUnavailable("the answer is too large for a time-stamp response")


def build_request(imprint: bytes, nonce: int, policy: str | None, algorithm: str = "sha256") -> bytes:
    """A DER TimeStampReq (RFC 3161 §2.4.1) over `imprint`, an `algorithm` digest, asking for the
    certificate."""
    fields: dict[str, object] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": algorithm}, "hashed_message": imprint},
        "nonce": nonce,
        # The certificate in the token lets any verifier, years later, check it without asking us.
        "cert_req": True,
    }
    if policy is not None:
        fields["req_policy"] = policy
    return bytes(asn1crypto.tsp.TimeStampReq(fields).dump())


def parse_response(der: bytes) -> bytes:
    """The token DER of a granted TimeStampResp (RFC 3161 §2.4.2); TsaRefused otherwise."""
    try:
        cls, method, tag, _, contents, _ = asn1crypto.parser.parse(der, strict=True)
        if (cls, method, tag) != (0, 1, 16):
            raise ValueError("not a SEQUENCE")
        _, _, _, header, inner, trailer = asn1crypto.parser.parse(contents)
        split = len(header) + len(inner) + len(trailer)
        status_info = asn1crypto.tsp.PKIStatusInfo.load(contents[:split], strict=True)
        status = status_info["status"].native
        token = contents[split:]
        if token:
            asn1crypto.parser.parse(token, strict=True)  # exactly one value follows the status
    except (ValueError, TypeError) as exc:
        raise TsaUnavailable(f"the answer is not a DER TimeStampResp: {exc}") from exc
    # RFC 3161 §2.4.2: only granted and grantedWithMods carry a token.
    if status not in ("granted", "granted_with_mods"):
        fail = status_info["fail_info"].native
        text = status_info["status_string"].native
        raise TsaRefused(str(status), ",".join(sorted(fail or ())), " ".join(text or ()))
    if not token:
        raise TokenFormatError("the TSA granted the request but sent no token")
    return bytes(token)


def check_reply_token(
    token: bytes,
    imprint: bytes,
    nonce: int | None,
    policy: str | None,
    trust: Sequence[x509.Certificate],
    algorithm: str = "sha256",
) -> bytes:
    """Everything RFC 3161 §2.4.2 asks of a requester before it relies on a token."""
    # The imprint ours, the signature, signingCertificateV2, the TSA certificate's critical EKU
    # timeStamping and its chain; the one parse this takes also gives the nonce and the policy.
    info = check_token(token, imprint, trust, algorithm)
    if nonce is not None and info.nonce != nonce:
        raise TokenNonceError("the token does not carry the nonce of the request")
    if policy is not None and info.policy != policy:
        raise TokenPolicyError(f"the token's policy is {info.policy}, not the configured {policy}")
    return token
