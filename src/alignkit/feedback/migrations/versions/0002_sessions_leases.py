"""Annotation store: server-side sign-in sessions (one per sign-in, revocable, with expiry),
leases (an item handed to an annotator, held for them until it expires), why a task could not
be shown (``tasks.unrenderable``), and the append-only audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )


    op.create_table(
        "leases",
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("expires_at", TS, nullable=False),
    )


    with op.batch_alter_table("tasks") as batch:  # SQLite rebuilds the table
        batch.add_column(sa.Column("unrenderable", sa.Text, nullable=True))
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"),
                  nullable=True),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"),
                  nullable=True, index=True),
        sa.Column("task_id", sa.Integer, nullable=True),
        sa.Column("detail", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("audit")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("unrenderable")
    op.drop_table("leases")
    op.drop_table("sessions")
