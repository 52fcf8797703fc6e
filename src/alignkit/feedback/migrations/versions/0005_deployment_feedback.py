"""Annotation store: feedback from deployment (``alignkit serve --feedback-db``) --
conversations of signed-in users with the served policy, their turns (the user's message and the
conversation up to it), the answers shown with their provenance (model, sampling settings, seed,
time) and the users' thumbs up / down with a reason; a side-by-side pick is kept on the turn.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "chat_conversations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_chat_conversations_user_id", "chat_conversations", ["user_id"])
    op.create_table(
        "chat_turns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("conversation_id", sa.Integer,
                  sa.ForeignKey("chat_conversations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("prompt", sa.JSON, nullable=False),
        sa.Column("picked_answer_id", sa.Integer, nullable=True),
        sa.Column("picked_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_chat_turns_conversation_id", "chat_turns", ["conversation_id"])
    op.create_table(
        "chat_answers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("turn_id", sa.Integer, sa.ForeignKey("chat_turns.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("temperature", sa.Float, nullable=False),
        sa.Column("top_p", sa.Float, nullable=False),
        sa.Column("max_tokens", sa.Integer, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_chat_answers_turn_id", "chat_answers", ["turn_id"])
    op.create_table(
        "chat_ratings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("answer_id", sa.Integer, sa.ForeignKey("chat_answers.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("answer_id", "user_id", name="uq_chat_rating_answer_user"),
    )
    op.create_index("ix_chat_ratings_answer_id", "chat_ratings", ["answer_id"])


def downgrade() -> None:
    op.drop_table("chat_ratings")
    op.drop_table("chat_answers")
    op.drop_table("chat_turns")
    op.drop_table("chat_conversations")
