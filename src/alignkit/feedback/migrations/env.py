"""Alembic environment of the annotation store. ``alignkit.feedback.store.upgrade`` runs it
with an open connection in ``config.attributes["connection"]``; ``alembic`` on the command line
can use ``sqlalchemy.url`` instead."""

from alembic import context
from sqlalchemy import create_engine

from alignkit.feedback.store import metadata

config = context.config


def run_with(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        run_with(conn)
