"""The job database: tables, engine, and the schema kept current through alembic migrations.

SQLite (a file) by default, for one gateway on one machine; PostgreSQL (`postgresql+psycopg://...`)
for a shared deployment, where several gateways may run on one database. The tables use portable
types only. The schema is never created from the models directly; the gateway runs the packaged
migrations (`upgrade head`) when it starts, so an older database is brought forward (on Postgres under
an advisory lock: gateways starting together migrate one after the other).

Connection loss: pooled Postgres connections are checked before use (`pool_pre_ping`), and the
store retries its idempotent operations with exponential backoff (`retry_transient`) for up to
`retry_s` seconds before giving up with DatabaseUnavailable.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from tenacity import (
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_RETRY_S = 30.0  # how long an idempotent operation is retried while the database is unreachable
_MIGRATION_LOCK = 0x7072696D65  # pg_advisory_xact_lock key held while migrating ("prime")

log = logging.getLogger("prime_ray.gateway")
T = TypeVar("T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone; it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return value.astimezone(dt.timezone.utc) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("owner_key_id", "idempotency_key", name="uq_jobs_owner_idempotency"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # list order and cursor
    id: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(100))  # the name the spec was submitted with
    state: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    spec: Mapped[dict] = mapped_column(JSON)  # the spec as it runs (name = id, gateway's artifact root)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)  # stage -> {state, done, total, metrics}
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)  # stage -> final metrics
    error: Mapped[str | None] = mapped_column(Text)
    owner_key_id: Mapped[str | None] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    submission_id: Mapped[str] = mapped_column(String(64), unique=True)
    submitted: Mapped[bool] = mapped_column(Boolean, default=False)  # Ray has accepted the submission
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes of events.jsonl already applied
    # The served student: {state, url, models, error, submission_id, attempt, updated_at}; null when none.
    deployment: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The gateway whose follower looks after the job, until `lease_expires_at` (then any gateway may).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    salt: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))  # sha256(salt + secret); the key itself is never stored
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


def _finite(value: Any) -> Any:
    """`value` with every NaN / ±inf float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def json_dumps(value: Any) -> str:
    """The JSON columns' serializer, on every backend: standard JSON only (Postgres refuses `NaN`, and
    the API could not send it either), so a non-finite metric is stored as null."""
    return json.dumps(_finite(value), allow_nan=False)


def engine_url(url: str) -> str:
    """`url` with Postgres URLs given without a driver (`postgresql://`, `postgres://`) sent to psycopg 3."""
    for bare in ("postgres://", "postgresql://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get a busy timeout and WAL so readers never block the follower.
    Postgres connections are checked before each use (a restarted server is reconnected to transparently)
    and give up connecting after 10 s."""
    url = engine_url(url)
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               json_serializer=json_dumps)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    connect_args = {"connect_timeout": 10} if make_url(url).get_backend_name() == "postgresql" else {}
    return create_engine(url, pool_pre_ping=True, pool_recycle=1800, json_serializer=json_dumps,
                         connect_args=connect_args)


def _use_wal(cursor: Any) -> None:
    """Put a SQLite file in WAL mode. The mode is kept in the file, so only a new file's first
    connections change it, and SQLite answers a switch made while another connection switches with
    "database is locked" at once, without waiting its busy timeout: that answer is retried here."""
    for attempt in Retrying(retry=retry_if_exception_type(sqlite3.OperationalError),
                            wait=wait_exponential_jitter(initial=0.01, max=0.5), stop=stop_after_delay(30),
                            reraise=True):
        with attempt:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")


def migrate(engine: Engine) -> None:
    """Bring the database schema to the newest packaged migration (`alembic upgrade head`)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        # Held until this transaction ends: a second gateway (or `keys` command) starting at the same
        # time waits, then finds the schema at head.
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        elif connection.dialect.name == "sqlite":
            # The write lock up front, and the DDL inside the transaction (pysqlite would commit each
            # CREATE on its own, so a concurrent start would see half a schema).
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str, retry_s: float = DEFAULT_RETRY_S) -> sessionmaker:
    """Engine + migrations + a session factory: what the gateway and the `keys` commands start with.

    `retry_s`: how long the store retries an idempotent operation while the database is unreachable.
    """
    engine = make_engine(url)
    retry_transient(lambda: migrate(engine), retry_s)
    return Sessions(engine, retry_s)


class Sessions(sessionmaker):
    """A session factory that also says how long its operations are retried (`retry_window`)."""

    def __init__(self, engine: Engine, retry_s: float = DEFAULT_RETRY_S):
        super().__init__(engine, expire_on_commit=False)
        self.retry_s = retry_s


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached within the retry window (the gateway answers 503)."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` is the connection's fault (lost, refused, server restarting, SQLite busy),
    not the statement's: only those are worth retrying."""
    if not isinstance(error, DBAPIError):
        return False
    return bool(error.connection_invalidated) or isinstance(error, (OperationalError, InterfaceError))


def database_error(error: BaseException) -> str:
    """A one-line reason: the driver's error class and the first line of its message."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def retry_transient(operation: Callable[[], T], retry_s: float = DEFAULT_RETRY_S) -> T:
    """Run `operation` (an idempotent unit: one transaction, or a read) and run it again on a transient
    database error, with exponential backoff and jitter (0.05 s doubling to 2 s) for up to `retry_s`
    seconds; then raise DatabaseUnavailable. Other errors propagate at once."""

    def _log(state: Any) -> None:
        log.warning("database unreachable (try %d), retrying: %s", state.attempt_number,
                    database_error(state.outcome.exception()))

    retrying = Retrying(retry=retry_if_exception(is_transient), wait=wait_exponential_jitter(initial=0.05, max=2),
                        stop=stop_after_delay(retry_s), before_sleep=_log, reraise=True)
    try:
        return retrying(operation)
    except DBAPIError as e:
        if is_transient(e):
            raise DatabaseUnavailable(f"the database cannot be reached: {database_error(e)}") from e
        raise


def retry_window(sessions: sessionmaker) -> float:
    """How long operations on `sessions` are retried: its own window, or the default for a plain factory."""
    return getattr(sessions, "retry_s", DEFAULT_RETRY_S)


def check_database(sessions: sessionmaker) -> str:
    """`ok` if the database answers a query now, else why not (no retries: /readyz reports the present)."""
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - any failure means not ready; say which
        return database_error(e)
    return "ok"
