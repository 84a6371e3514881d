"""Errors raised while producing or checking evidence and its time-stamps."""

from __future__ import annotations


class EvidenceError(Exception):
    """Base class for evidence failures."""


class TimeStampError(EvidenceError):
    """An RFC 3161 time-stamp token is unusable; the subclass says which check failed."""


class TokenFormatError(TimeStampError):
    """The token is not a CMS SignedData over a TSTInfo (RFC 3161 §2.4.2)."""


class TokenSignatureError(TimeStampError):
    """The token's CMS signature, message digest or ESS signing certificate does not verify."""


class TokenImprintError(TimeStampError):
    """The token time-stamps other data than expected (RFC 3161 §2.4.2 messageImprint)."""


class TokenCertificateError(TimeStampError):
    """The TSA certificate lacks the timeStamping purpose or does not chain to a trusted TSA."""
