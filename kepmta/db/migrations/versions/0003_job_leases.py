"""Job leases: several nodes on one database each claim a job before doing it.

`jobs.claimed_by` names the node that last claimed a job and `jobs.lease_until` says until when
its claim holds (kepmta.queue.jobs). A pending job of an older database may have been begun by a
server that stopped before it recorded anything, so it is marked claimed (by no live node, the
lease ended): its next attempt looks for the file an earlier one may have filed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# A name no node can have (kepmta.config allows letters, digits, '.', '_' and '-').
_EARLIER = "(before leases)"


def upgrade() -> None:
    # On SQLite the table is made anew, as kepmta.db.schema declares it, rather than altered; on
    # PostgreSQL the columns are added.
    anew = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("jobs", recreate="always" if anew else "auto") as jobs:
        jobs.add_column(sa.Column("claimed_by", sa.String(64)))
        jobs.add_column(sa.Column("lease_until", sa.DateTime(timezone=True)))
    op.execute(
        sa.text("UPDATE jobs SET claimed_by = :earlier WHERE state = 'pending'").bindparams(earlier=_EARLIER)
    )
