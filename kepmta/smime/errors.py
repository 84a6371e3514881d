"""Errors raised while reading S/MIME messages.

They carry a short English sentence that ends up, unchanged, in a `SignatureCheck.detail` and from
there in the rejection evidence, so the message text is written for the sender to read.
"""

from __future__ import annotations

__all__ = ["MimeStructureError", "NotSignedError", "SmimeError"]


class SmimeError(ValueError):
    """A submitted message cannot be read as an S/MIME signed message."""


class NotSignedError(SmimeError):
    """The message is well formed but carries no S/MIME signature at its top level."""


class MimeStructureError(SmimeError):
    """The MIME framing is broken: a missing boundary, an unterminated header block, bad base64."""
