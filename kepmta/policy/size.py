"""Message size: the policy's limit, checked at MAIL (SIZE=) and while DATA streams."""

from __future__ import annotations

from kepmta.evidence.model import Reason
from kepmta.policy.refusal import PolicyError, refuse


def too_big(limit: int) -> PolicyError:
    # RFC 1870 §6 / RFC 3463 X.3.4: message too big for system
    return refuse(552, "5.3.4", Reason.RA05, f"the message is larger than the limit of {limit} bytes")


def check_declared_size(declared: int | None, limit: int) -> None:
    if declared is not None and declared > limit:
        raise too_big(limit)
