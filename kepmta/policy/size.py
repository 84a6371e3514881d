"""Message size: 100 MB when every recipient is here, 25 MB when any is at a peer (the policy's
figures); checked at MAIL (SIZE=), at each RCPT, and while DATA streams (RFC 1870)."""

from __future__ import annotations

from kepmta.evidence.model import Reason
from kepmta.policy.refusal import PolicyError, refuse


def too_big(limit: int, *, peer: bool) -> PolicyError:
    where = "to another KEP provider" if peer else "within this provider"
    where_tr = "başka bir KEP hizmet sağlayıcısına" if peer else "bu hizmet sağlayıcı içinde"
    # RFC 1870 §6 / RFC 3463 X.3.4: message too big for system
    return refuse(
        552,
        "5.3.4",
        Reason.RA05,
        f"the message is larger than the limit of {limit} bytes for mail {where}",
        f"ileti, {where_tr} gönderim için {limit} baytlık sınırı aşıyor",
    )


def check_declared_size(declared: int | None, limit: int, *, peer: bool) -> None:
    if declared is not None and declared > limit:
        raise too_big(limit, peer=peer)
