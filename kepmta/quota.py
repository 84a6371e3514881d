"""Quota warnings: most mail clients never show IMAP QUOTA, so users are told by mail when their
mailbox passes each warning level of the policy (KEP.md "mailbox quota")."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from typing import BinaryIO

from kepmta.accounts import AccountStore, Usage
from kepmta.maildir import INBOX, Maildir
from kepmta.notices import notice_message


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def warning_message(address: str, service: str, usage: Usage, level: int) -> bytes:
    if level >= 100:
        tr = (
            "KEP posta kutunuz doldu. Kota aşıldığı sürece ileti gönderemezsiniz; "
            "ileti almaya devam edersiniz."
        )
        en = "Your KEP mailbox is full. While it is over its quota you cannot send; you still receive mail."
    else:
        tr = f"KEP posta kutunuzun %{level}'i doldu. Kota dolduğunda ileti gönderemezsiniz."
        en = f"Your KEP mailbox is {level}% full. When it is full you will not be able to send."
    figures = f"{_mib(usage.used)} / {_mib(usage.limit)}"
    return notice_message(
        address,
        service,
        f"KEP kota uyarısı / quota warning: %{level}",
        f"{tr}\r\nKullanım: {figures}\r\nYer açmak için ileti silebilir ya da ek kota alabilirsiniz.\r\n",
        f"{en}\r\nUsage: {figures}\r\nDelete messages or buy more quota to make room.\r\n",
        "quota",
    )


class QuotaWarner:
    def __init__(self, accounts: AccountStore, levels: Sequence[int], service_address: str) -> None:
        self.accounts = accounts
        self.levels = tuple(sorted(levels))
        self.service_address = service_address

    async def check(self, address: str) -> None:
        """Warn `address` once per level reached since its usage was last below that level."""
        usage, warned = await self.accounts.warning_state(address)
        reached = max((lvl for lvl in self.levels if usage.percent >= lvl), default=0)
        if reached > warned:
            raw = warning_message(address, self.service_address, usage, reached)
            box = self.accounts.maildir(address)
            base = Maildir.unique_name(f"quota-{reached}-{secrets.token_hex(6)}")

            def write(out: BinaryIO) -> None:
                out.write(raw)

            await asyncio.to_thread(box.deliver, INBOX, base, write)
        if reached != warned:
            await self.accounts.set_quota_warned(address, reached)
