"""The gateway's tests run on both job databases: a SQLite file, and the real PostgreSQL server.

`db_url` (one per test) and `module_db_url` (one per test module, for module-scoped gateways) are
parametrized over both; each Postgres database is created for its test(s) and dropped after. The
server is PRIME_RAY_TEST_POSTGRES_URL (default: the local one, trust authentication, database `test`,
used only to create and drop the test databases).

Every gateway test module is also watched: after its tests, the gateway's log and uvicorn's hold no
unhandled exception (a client's mistake answered with a 500, a request that broke the server, a
follower that crashed). Gateways run as subprocesses are checked through their log files instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

POSTGRES_URL = os.environ.get("PRIME_RAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


@contextlib.contextmanager
def fresh_database(backend: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database of `backend`, removed on exit."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'gateway.db'}"
        return
    name = f"prime_ray_test_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        raise RuntimeError(f"cannot create a test database on {POSTGRES_URL} (set PRIME_RAY_TEST_POSTGRES_URL "
                           f"to a server where this user may CREATE DATABASE): {e}") from e
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:  # FORCE: a gateway's pooled connections may still be open
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request, tmp_path_factory) -> Iterator[str]:
    with fresh_database(request.param, tmp_path_factory.mktemp(request.param)) as url:
        yield url


@pytest.fixture
def postgres_url(tmp_path) -> Iterator[str]:
    """A fresh Postgres database only (what concerns a server: lost connections, several gateways)."""
    with fresh_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url(tmp_path_factory) -> Iterator[str]:
    with fresh_database("postgresql", tmp_path_factory.mktemp("postgresql")) as url:
        yield url


class PostgresAdmin:
    """What an operator does to the server: end a database's sessions, stop and allow connections."""

    def __init__(self) -> None:
        self.engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")

    def execute(self, sql: str, **params):
        with self.engine.connect() as connection:
            result = connection.execute(text(sql), params)
            return result.all() if result.returns_rows else []

    def terminate_sessions(self, db_url: str) -> int:
        """`pg_terminate_backend` on every session of that database; how many there were."""
        rows = self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :name AND pid <> pg_backend_pid()", name=make_url(db_url).database)
        return sum(1 for (ended,) in rows if ended)

    def allow_connections(self, db_url: str, allow: bool) -> None:
        name = make_url(db_url).database
        self.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[PostgresAdmin]:
    admin = PostgresAdmin()
    yield admin
    admin.engine.dispose()

WATCHED = ("prime_ray.gateway", "uvicorn.error", "uvicorn.asgi")


class ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module", autouse=True)
def no_unhandled_exceptions():
    errors = ErrorRecords()
    loggers = [logging.getLogger(name) for name in WATCHED]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        yield errors
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
    assert errors.records == [], "the gateway logged unhandled exceptions"
