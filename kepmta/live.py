"""The configuration in force in a running server: one object the services read it from.

Services that hold a policy value read it through `Live` at each use instead of keeping their own
copy, so a reload (kepmta.reload) that replaces `settings` reaches the next session, transaction or
job without touching the ones under way.
"""

from __future__ import annotations

from kepmta.config import Policy, Settings


class Live:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def policy(self) -> Policy:
        return self.settings.policy
