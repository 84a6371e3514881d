"""The provider's transaction (evidence) certificate and key, wherever the key lives."""

from __future__ import annotations

from kepmta import pki
from kepmta.config import Settings
from kepmta.evidence import pkcs11


def evidence_pair(s: Settings) -> pki.KeyPair:
    """The transaction certificate with its key: from a PEM file, or in a PKCS#11 token."""
    if s.evidence_key_uri is not None:
        assert s.evidence_pin_file is not None  # config requires pin_file with key_uri
        return pkcs11.load_pair(s.evidence_key_uri, s.evidence_pin_file, pki.load_certs(s.evidence_cert)[0])
    assert s.evidence_key is not None  # config requires key or key_uri
    return pki.load_pair(s.evidence_cert, s.evidence_key)
