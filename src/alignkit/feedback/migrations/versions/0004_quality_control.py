"""Annotation store: quality-control settings of a project -- ``calibration_items`` (N gold
items every annotator answers first), ``calibration_accuracy`` (the gold accuracy on them that
lets their labels count) and ``attention_rate`` (the share of hidden gold items mixed into a
calibrated annotator's queue). Existing projects get 0 / 0.8 / 0: no gate, gold served as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("calibration_items", sa.Integer, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("calibration_accuracy", sa.Float, nullable=False,
                                   server_default="0.8"))
        batch.add_column(sa.Column("attention_rate", sa.Float, nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("attention_rate")
        batch.drop_column("calibration_accuracy")
        batch.drop_column("calibration_items")
