"""Alembic environment: runs on the connection the gateway passes in (see prime_ray.service.db.migrate)."""

from alembic import context

from prime_ray.service.db import Base, make_engine

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand with -x url=...
    engine = make_engine(context.get_x_argument(as_dictionary=True)["url"])
    connection = engine.connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
