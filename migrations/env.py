"""Alembic environment for asynchy.

asynchy runs migrations through its own code (``asynchy db upgrade``), which
passes an open connection in ``config.attributes["connection"]``.  Developers
may also run ``alembic`` from the repository root (see alembic.ini) to
autogenerate a revision against a scratch database.
"""

from alembic import context
from sqlalchemy import create_engine

from asynchy.models import add_postgresql_options, metadata

config = context.config
add_postgresql_options()  # alembic compares against the whole schema, both dialects' options
target_metadata = metadata


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite needs copy-and-move for ALTER
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
