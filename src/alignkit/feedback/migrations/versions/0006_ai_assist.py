"""Annotation store: AI-assisted annotation -- a judge's suggestion per task (``suggestions``),
a project's ``assist`` setting (off, after, before) and, per label, whether the suggestion was
shown before the annotator answered (``labels.assisted``: the anchoring report compares labels
given with and without it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("assist", sa.String(10), nullable=False,
                                   server_default="off"))
    with op.batch_alter_table("labels") as batch:
        batch.add_column(sa.Column("assisted", sa.Boolean, nullable=True))
    op.create_table(
        "suggestions",
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("judge", sa.String(1000), nullable=False),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("suggestions")
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("assisted")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("assist")
