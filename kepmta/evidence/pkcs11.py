"""The evidence signing key in a PKCS#11 token (an HSM), addressed by an RFC 7512 URI.

`Pkcs11Key` is an `EllipticCurvePrivateKey` whose `sign` runs in the token, so every signer in
kepmta (evidence, checkpoints, REM messages) uses the HSM without knowing it. The private key never
leaves the token; the PIN is read from a file and never logged, and a URI carrying a PIN is refused.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

import pkcs11
import pkcs11.exceptions
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import _serialization, hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11.types import SignMixin

from kepmta.evidence.errors import EvidenceError
from kepmta.pki import KeyPair

_HASHES: dict[str, str] = {"sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}


class Pkcs11Error(EvidenceError):
    """The PKCS#11 URI, module, token or key cannot be used."""


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 PKCS#11 URI that select a private key."""

    module_path: str
    token: str | None = None
    serial: str | None = None
    label: str | None = None
    key_id: bytes | None = None

    @classmethod
    def parse(cls, uri: str) -> Pkcs11Uri:
        if not uri.startswith("pkcs11:"):
            raise Pkcs11Error("a PKCS#11 URI starts with pkcs11: (RFC 7512 §2.3)")
        path, _, query = uri.removeprefix("pkcs11:").partition("?")
        attrs: dict[str, bytes] = {}
        for part in (p for p in path.split(";") if p):
            name, sep, value = part.partition("=")
            if not sep:
                raise Pkcs11Error(f"PKCS#11 URI attribute {name!r} has no value")
            # RFC 7512 §2.3: values are percent-encoded; `id` is arbitrary bytes.
            attrs[name] = unquote_to_bytes(value)
        params: dict[str, str] = {}
        for part in (p for p in query.split("&") if p):
            name, _, value = part.partition("=")
            params[name] = unquote(value)
        if "pin-value" in params:
            # A PIN in the configuration would be printed wherever the URI is; use pin_file.
            raise Pkcs11Error("the PKCS#11 URI must not carry pin-value; give the PIN in pin_file")
        if "module-path" not in params:
            raise Pkcs11Error("the PKCS#11 URI needs module-path=<the token's PKCS#11 library>")
        kind = attrs.get("type")
        if kind not in (None, b"private"):
            raise Pkcs11Error("the PKCS#11 URI must name a private key (type=private)")
        if "object" not in attrs and "id" not in attrs:
            raise Pkcs11Error("the PKCS#11 URI must name the key by object= (label) or id=")
        return cls(
            module_path=params["module-path"],
            token=attrs["token"].decode() if "token" in attrs else None,
            serial=attrs["serial"].decode() if "serial" in attrs else None,
            label=attrs["object"].decode() if "object" in attrs else None,
            key_id=attrs.get("id"),
        )


class Pkcs11Key(ec.EllipticCurvePrivateKey):
    """An EC private key that stays in a PKCS#11 token; signing happens there (CKM_ECDSA)."""

    def __init__(self, session: pkcs11.Session, key: SignMixin, public: ec.EllipticCurvePublicKey) -> None:
        self._session = session
        self._key = key
        self._public = public
        # A PKCS#11 session runs one operation at a time (PKCS#11 v2.40 §5.1.4); signers run in threads.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Pkcs11Key on {self._public.curve.name}, in a PKCS#11 token>"

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise Pkcs11Error("only ECDSA signatures are made with a PKCS#11 EC key")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)
        elif isinstance(algorithm, hashes.HashAlgorithm) and algorithm.name in _HASHES:
            digest = hashlib.new(_HASHES[algorithm.name], bytes(data)).digest()
        else:
            raise Pkcs11Error(f"hash {algorithm.name} is not used for evidence signatures")
        # CKM_ECDSA signs a digest made here: every token supports it, unlike the hash-and-sign
        # mechanisms (PKCS#11 v2.40 Current Mechanisms §2.3.6).
        try:
            with self._lock:
                raw = self._key.sign(digest, mechanism=pkcs11.Mechanism.ECDSA)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise Pkcs11Error(f"the token refused to sign: {type(exc).__name__}") from exc
        half = len(raw) // 2
        # PKCS#11 returns r || s; X.509 and CMS want the DER SEQUENCE (RFC 5480 §2.2 / RFC 5753 §7.2).
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise Pkcs11Error("the evidence key signs only; it does no key agreement")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise Pkcs11Error("the private key stays in the token")

    def private_bytes(
        self,
        encoding: _serialization.Encoding,
        format: _serialization.PrivateFormat,
        encryption_algorithm: _serialization.KeySerializationEncryption,
    ) -> bytes:
        raise Pkcs11Error("the private key stays in the token")

    def __copy__(self) -> Pkcs11Key:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pkcs11Key:
        return self


def open_key(uri: str, pin: str, cert: x509.Certificate) -> Pkcs11Key:
    """Log in to the token named by `uri` and find the private key of `cert` there."""
    where = Pkcs11Uri.parse(uri)
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise Pkcs11Error("the evidence certificate does not hold an EC key")
    if not os.path.exists(where.module_path):
        raise Pkcs11Error(f"PKCS#11 module {where.module_path} does not exist")
    try:
        lib = pkcs11.lib(where.module_path)
        token = lib.get_token(
            token_label=where.token, token_serial=where.serial.encode() if where.serial else None
        )
        try:
            session = token.open(user_pin=pin)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            # PKCS#11 v2.40 §5.6: a login holds for every session of the process on that token.
            session = token.open()
        key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=where.label, id=where.key_id)
    except pkcs11.exceptions.NoSuchToken:
        raise Pkcs11Error(
            f"no PKCS#11 token {where.token or where.serial!r} in {where.module_path}"
        ) from None
    except pkcs11.exceptions.PinIncorrect:
        raise Pkcs11Error("the PKCS#11 token refused the PIN") from None
    except pkcs11.exceptions.NoSuchKey:
        raise Pkcs11Error(f"no private key {where.label or where.key_id!r} in the PKCS#11 token") from None
    except pkcs11.exceptions.MultipleObjectsReturned:
        raise Pkcs11Error("the PKCS#11 URI matches more than one private key") from None
    except pkcs11.exceptions.PKCS11Error as exc:
        raise Pkcs11Error(f"the PKCS#11 token cannot be used: {type(exc).__name__}") from None
    if key.key_type != pkcs11.KeyType.EC or not isinstance(key, SignMixin):
        raise Pkcs11Error("the PKCS#11 key is not an EC signing key")
    signer = Pkcs11Key(session, key, public)
    # The certificate and the token key must be a pair, or every evidence would fail to verify.
    challenge = os.urandom(32)
    try:
        public.verify(signer.sign(challenge, ec.ECDSA(hashes.SHA256())), challenge, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Pkcs11Error("the PKCS#11 key does not belong to the evidence certificate") from None
    return signer


def load_pair(uri: str, pin_file: os.PathLike[str] | str, cert: x509.Certificate) -> KeyPair:
    """The evidence key pair with its private half in the token."""
    with open(pin_file, encoding="utf-8") as f:
        pin = f.read().strip()
    return KeyPair(cert, open_key(uri, pin, cert), in_token=True)
