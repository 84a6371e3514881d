"""DKIM on the messages KEP providers relay to each other (RFC 6376; RFC 8463 for Ed25519).

Every relayed message carries two signatures by the sending provider, Ed25519 and RSA (RFC 8463
§3 recommends both while verifiers still learn Ed25519), and a receiving provider verifies them
with the keys of its peer registry only: `verify` never asks DNS, so a peer is known by what was
registered for it, not by what its zone says today.

dkimpy does the canonicalisation and the cryptography. It is synchronous, so these are plain
functions on bytes for worker processes or threads, never for the event loop. Its RSA signing is
pure Python (about 50 ms a signature, three signatures a relayed message: the dispatch and the
receipts); `_rsa_sign` gives it OpenSSL's instead, byte for byte the same signature.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from dkim.util import InvalidTagValueList, parse_tag_value

__all__ = [
    "DkimError",
    "PublicKey",
    "SigningKey",
    "key_public_value",
    "public_value",
    "sign",
    "txt_record",
    "verify",
]

# RFC 6376 §3.3 a= (rsa-sha256) and RFC 8463 §3 (ed25519-sha256), by key type
_SIGNATURE_ALGORITHMS = {"ed25519": b"ed25519-sha256", "rsa": b"rsa-sha256"}
# The fields a REM message is read by: addressing, the subject, threading and MIME framing.
_SIGNED_FIELDS = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "MIME-Version",
    "Content-Type",
)
# EN 319 532-3 REM metadata and the Turkish KEP fields: the REM digest, type and ids live there.
_SIGNED_PREFIXES = (b"rem-", b"x-tr-rem-")
# RFC 1035 §3.3.14: a TXT record is a list of character-strings of at most 255 octets each.
_TXT_STRING = 255


class DkimError(ValueError):
    """A DKIM signature could not be made, or none verifies; the text says why, in a sentence."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class SigningKey:
    selector: str
    algorithm: str  # "ed25519" | "rsa"
    private_pem: bytes


@dataclass(frozen=True)
class PublicKey:
    selector: str
    algorithm: str  # "ed25519" | "rsa"
    public_key: str  # the base64 p= value as published in DNS


def sign(message: bytes, domain: str, keys: Sequence[SigningKey]) -> bytes:
    """DKIM-Signature header fields for `message`, one per key, CRLF-terminated, to be put in front
    of it. relaxed/relaxed (RFC 6376 §3.4.2, §3.4.4): no MTA on the way may break them by refolding."""
    if not keys:
        raise DkimError("there is no DKIM key to sign with")
    try:
        signer = dkim.DKIM(message, linesep=b"\r\n")
    except dkim.DKIMException as exc:
        raise DkimError(f"the message cannot be DKIM-signed: {exc}") from exc
    fields = _fields_to_sign([name for name, _ in signer.headers])
    out = []
    for key in keys:
        private = _dkimpy_private_key(key)
        try:
            out.append(
                signer.sign(
                    key.selector.encode("ascii"),
                    domain.encode("ascii"),
                    private,
                    signature_algorithm=_SIGNATURE_ALGORITHMS[key.algorithm],
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=fields,
                )
            )
        except (dkim.DKIMException, UnicodeEncodeError) as exc:
            raise DkimError(f"DKIM key {key.selector} ({key.algorithm}) cannot sign: {exc}") from exc
    return b"".join(out)


@functools.lru_cache(maxsize=8)
def _rsa_key(numbers: tuple[int, ...]) -> rsa.RSAPrivateKey:
    n, e, d, p, q, dmp1, dmq1, iqmp = numbers
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n)).private_key()


_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}


def _rsa_sign(digest: Any, key: dict[str, int]) -> bytes:
    """RFC 8017 §8.2.1 RSASSA-PKCS1-v1_5 over dkimpy's finished hash, with dkimpy's parsed key.

    The scheme is deterministic, so this is the signature dkimpy's own code would make (a test
    compares them), only computed by OpenSSL."""
    names = ("modulus", "publicExponent", "privateExponent", "prime1", "prime2", "exponent1", "exponent2")
    numbers = (*(key[k] for k in names), key["coefficient"])
    algorithm = _HASHES[digest.name]
    return _rsa_key(numbers).sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


# dkimpy looks the function up in its module at every signature.
dkim.RSASSA_PKCS1_v1_5_sign = _rsa_sign


def _fields_to_sign(present: Sequence[bytes]) -> list[bytes]:
    """h= names: each field once more than it occurs, so that no instance can be added after
    signing (RFC 6376 §5.4.2, §8.15); a field that is absent is thus signed as absent."""
    names = [name.encode("ascii") for name in _SIGNED_FIELDS]
    names += [name for name in dict.fromkeys(n.lower() for n in present) if name.startswith(_SIGNED_PREFIXES)]
    counts = [sum(1 for p in present if p.lower() == name.lower()) for name in names]
    return [name for name, count in zip(names, counts, strict=True) for _ in range(count + 1)]


@functools.lru_cache(maxsize=8)
def _dkimpy_private_key(key: SigningKey) -> bytes:
    """The private key in the form dkimpy reads: for RSA a PKCS#1 PEM, for Ed25519 the 32-byte
    private key itself in base64 (RFC 8463 §4.1; dkimpy hands it to PyNaCl as the seed).

    Remembered: loading an RSA key checks it, which costs more than signing with it."""
    if key.algorithm not in _SIGNATURE_ALGORITHMS:
        raise DkimError(f"DKIM key {key.selector} has algorithm {key.algorithm!r}, not ed25519 or rsa")
    private = _load_private(key.private_pem, key.selector)
    if key.algorithm == "ed25519" and isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return base64.b64encode(raw)
    if key.algorithm == "rsa" and isinstance(private, rsa.RSAPrivateKey):
        return private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    raise DkimError(f"DKIM key {key.selector} is said to be {key.algorithm} but its PEM holds another kind")


def _load_private(private_pem: bytes, selector: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimError(f"DKIM key {selector} is not an unencrypted PEM private key: {exc}") from exc


def verify(message: bytes, domain: str, keys: Sequence[PublicKey]) -> str:
    """Which signature of `domain` verifies with one of `keys` ("s=… a=…"); DkimError otherwise,
    naming why each DKIM-Signature failed."""
    try:
        checker = dkim.DKIM(message)
    except dkim.DKIMException as exc:
        raise DkimError(f"the message cannot be read for DKIM: {exc}") from exc
    except IndexError as exc:  # dkimpy on a message that begins with a continuation line
        raise DkimError("the message cannot be read for DKIM: its header block is malformed") from exc
    values = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    if not values:
        raise DkimError("the message has no DKIM-Signature")
    by_selector = {key.selector.lower(): key for key in keys}
    problems = []
    for index, value in enumerate(values):
        outcome = _verify_one(checker, index, value, domain, by_selector)
        if outcome.verified:
            return outcome.text
        problems.append(outcome.text)
    raise DkimError(f"no DKIM signature of {domain} verifies: " + "; ".join(problems))


@dataclass(frozen=True)
class _Outcome:
    verified: bool
    text: str


def _verify_one(
    checker: dkim.DKIM, index: int, value: bytes, domain: str, keys: dict[str, PublicKey]
) -> _Outcome:
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList:
        return _Outcome(False, f"DKIM-Signature {index + 1} cannot be read")
    signed_for = tags.get(b"d", b"").decode("ascii", "replace")
    selector = tags.get(b"s", b"").decode("ascii", "replace")
    algorithm = tags.get(b"a", b"").decode("ascii", "replace")
    label = f"s={selector}"
    if signed_for.lower() != domain.lower():
        return _Outcome(False, f"{label} is a signature of d={signed_for}, not of {domain}")
    key = keys.get(selector.lower())
    if key is None:
        return _Outcome(False, f"{label}: no key with selector {selector} is registered for {domain}")
    if _SIGNATURE_ALGORITHMS.get(key.algorithm) != tags.get(b"a"):
        return _Outcome(False, f"{label} signs with a={algorithm}, but the registered key is {key.algorithm}")
    # RFC 6376 §6.1.1: a signature that does not cover From must be ignored.
    if b"from" not in (name.strip().lower() for name in tags.get(b"h", b"").split(b":")):
        return _Outcome(False, f"{label} does not sign the From field")
    # RFC 6376 §8.2: with l= content could be appended to a verified body; nothing we send uses it.
    if b"l" in tags:
        return _Outcome(False, f"{label} covers only part of the body (l=)")
    record = _key_record(key)
    name = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
    try:
        dkim.evaluate_pk(name, record)
    except dkim.DKIMException as exc:
        return _Outcome(False, f"{label}: the registered key cannot be used: {exc}")
    try:
        verified = checker.verify(index, dnsfunc=_answer(name, record))
    except (dkim.DKIMException, InvalidTagValueList, ValueError) as exc:
        return _Outcome(False, f"{label}: {_reason(exc)}")
    if not verified:
        return _Outcome(
            False,
            f"{label}: bad signature: a signed header field was changed, or the key is not the one "
            "that signed",
        )
    return _Outcome(True, f"d={domain} {label} a={algorithm}")


def _reason(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("body hash mismatch"):
        return "body hash mismatch: the body was changed after signing"
    return text


def _key_record(key: PublicKey) -> bytes:
    return f"v=DKIM1; k={key.algorithm}; p={key.public_key}".encode("ascii", "replace")


def _answer(name: bytes, record: bytes) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy that knows one TXT record and nothing else: DNS is never asked."""

    def lookup(query: bytes, timeout: int = 5) -> bytes | None:
        return record if query.lower() == name.lower() else None

    return lookup


def public_value(private_pem: bytes) -> str:
    """The p= value for the key in `private_pem` (see `key_public_value`)."""
    return key_public_value(_load_private(private_pem, ""))


def key_public_value(private: PrivateKeyTypes) -> str:
    """The p= value for the key: Ed25519 as the raw 32-byte public key (RFC 8463 §4.2), RSA as
    the DER SubjectPublicKeyInfo (RFC 6376 §3.6.1), both base64."""
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")
    if isinstance(private, rsa.RSAPrivateKey):
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")
    raise DkimError("a DKIM key must be Ed25519 or RSA")


def txt_record(selector: str, domain: str, algorithm: str, p: str) -> str:
    """The zone file line publishing a key at <selector>._domainkey.<domain> (RFC 6376 §3.6.2.1).

    An RSA key is longer than one TXT string may be, so the text is cut into strings of 255
    characters, which resolvers join again (RFC 6376 §3.6.2.2).
    """
    if algorithm not in _SIGNATURE_ALGORITHMS:
        raise DkimError(f"DKIM algorithm {algorithm!r} is not ed25519 or rsa")
    if not re.fullmatch(r"[A-Za-z0-9+/=]+", p):
        raise DkimError("a DKIM p= value is base64")
    text = f"v=DKIM1; k={algorithm}; p={p}"
    strings = " ".join(f'"{text[at : at + _TXT_STRING]}"' for at in range(0, len(text), _TXT_STRING))
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT {strings}"
