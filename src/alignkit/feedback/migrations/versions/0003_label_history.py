"""Annotation store: the order a ranking's responses were shown in, kept with each label
(``labels.shown_order``; on SQLite label ids are no longer reused), and the append-only label
history (``label_history``): the previous label on an edit, the removed label on an undo, with
who and when.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # SQLite: the table is rebuilt with AUTOINCREMENT, so that the id of an undone label is never
    # handed to a later one (the label history names labels by id); PostgreSQL's sequence never
    # reuses one
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("labels", recreate="always" if sqlite else "auto",
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("shown_order", sa.JSON, nullable=True))
    op.create_table(
        "label_history",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label_id", sa.Integer, nullable=True, index=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("shown_order", sa.JSON, nullable=True),
        sa.Column("labelled_at", TS, nullable=False),
        sa.Column("by_user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"),
                  nullable=True),
        sa.Column("at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("label_history")
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("shown_order")
