"""Storage root identity and idempotency request fingerprints.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 01:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "store_identity",
        sa.Column("singleton", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("store_id", sa.UUID(), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("singleton", name=op.f("ck_store_identity_singleton")),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_store_identity")),
    )
    op.add_column(
        "analysis_jobs", sa.Column("request_fingerprint", sa.String(length=64), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("analysis_jobs", "request_fingerprint")
    op.drop_table("store_identity")
