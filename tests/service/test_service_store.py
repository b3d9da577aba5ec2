"""The gateway's database layer: migrations, the job state machine, jobs, API keys, leases, progress
folding; on SQLite and on PostgreSQL (the `db_url` fixture)."""

from __future__ import annotations

import datetime as dt
import itertools
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text, update

from prime_ray.pipeline.events import EventLog, read_events
from prime_ray.service.db import ApiKeyRow, Base, JobRow, make_engine, migrate, open_database, utcnow
from prime_ray.service.keys import create_key, has_live_key, list_keys, revoke_key, verify_key
from prime_ray.service.progress import JobProgress
from prime_ray.service.states import IllegalTransition, JobState, check_transition
from prime_ray.service.store import (
    MAX_SEQ,
    BadCursor,
    IdempotencyConflict,
    JobNotFound,
    JobStore,
    LeaseLost,
    decode_cursor,
    encode_cursor,
    submission_id,
)
from prime_ray.spec import parse_spec

ALLOWED = {
    ("queued", "running"), ("queued", "failed"), ("queued", "cancelled"),
    ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"),
}


def _spec(name="job", **extra):
    return parse_spec({"name": name, "data": {"source": {"format": "jsonl", "path": "u.jsonl"},
                                              "task": {"kind": "rating"}}, **extra})


@pytest.fixture
def sessions(db_url):
    sessions = open_database(db_url)
    yield sessions
    sessions.kw["bind"].dispose()


@pytest.fixture
def store(sessions, tmp_path):
    return JobStore(sessions, str(tmp_path / "artifacts"))


def test_migrations_create_exactly_the_models_and_run_twice(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # already at head: nothing to do, no error
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert {"jobs", "api_keys", "alembic_version"} <= set(inspect(connection).get_table_names())
    engine.dispose()


@pytest.mark.parametrize("current,wanted", list(itertools.product([s.value for s in JobState], repeat=2)))
def test_state_machine_allows_only_its_moves(current, wanted):
    if (current, wanted) in ALLOWED:
        assert check_transition("j", current, wanted) is JobState(wanted)
    else:
        with pytest.raises(IllegalTransition, match=f"cannot go from {current} to {wanted}"):
            check_transition("j", current, wanted)


def test_store_refuses_an_illegal_transition_and_keeps_the_row(store):
    job, _ = store.create(_spec(), owner_key_id="k")
    store.update(job.id, state=JobState.running, stage="ingest")
    store.update(job.id, state=JobState.succeeded)
    with pytest.raises(IllegalTransition):
        store.update(job.id, state=JobState.running)
    with pytest.raises(IllegalTransition):
        store.request_cancel(job.id)
    row = store.get(job.id)
    assert row.state == "succeeded" and row.started_at and row.finished_at and not row.cancel_requested


def test_created_job_runs_under_its_id_in_the_gateway_root(store, tmp_path):
    job, created = store.create(_spec("mine", artifact_root="/etc", resources={"ray_address": "ray://x:1"}), "k")
    assert created and job.state == "queued" and job.name == "mine"
    assert job.spec["name"] == job.id and job.submission_id == submission_id(job.id)
    assert job.spec["artifact_root"] == str(tmp_path / "artifacts")  # never where the submitter said
    assert job.spec["resources"]["ray_address"] is None  # it joins the cluster it is submitted to


def test_idempotency_key_per_owner(store):
    first, created = store.create(_spec(), "k1", idempotency_key="abc")
    again, created_again = store.create(_spec(), "k1", idempotency_key="abc")
    other_owner, created_other = store.create(_spec(), "k2", idempotency_key="abc")
    assert created and not created_again and again.id == first.id
    assert created_other and other_owner.id != first.id
    with pytest.raises(IdempotencyConflict, match="different spec"):
        store.create(_spec(seed=5), "k1", idempotency_key="abc")


def test_pages_are_newest_first_and_filtered(store):
    ids = [store.create(_spec(f"j{i}"), "k")[0].id for i in range(5)]
    store.update(ids[1], state=JobState.running)
    first, cursor = store.page(limit=2)
    second, cursor2 = store.page(limit=2, cursor=cursor)
    third, cursor3 = store.page(limit=2, cursor=cursor2)
    assert [j.id for j in first + second + third] == ids[::-1] and cursor3 is None
    running, _ = store.page(state=JobState.running)
    assert [j.id for j in running] == [ids[1]]
    assert store.counts_by_state() == {"queued": 4, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}
    for bad in ("zzz", "c2VxOng", "", "!!"):
        with pytest.raises(BadCursor):
            decode_cursor(bad)


def test_keys_are_stored_hashed_and_can_be_revoked(sessions):
    row, key = create_key(sessions, name="ci", read_only=True)
    assert key.startswith(f"prk_{row.id}_")
    secret = key.split("_")[2]
    with sessions() as session:
        stored = session.scalars(select(ApiKeyRow)).one()
    assert secret not in (stored.digest, stored.salt) and key not in str(vars(stored))
    assert verify_key(sessions, key).read_only
    assert verify_key(sessions, key[:-1] + ("0" if key[-1] != "0" else "1")) is None
    assert verify_key(sessions, f"prk_nosuchid_{secret}") is None
    assert verify_key(sessions, "garbage") is None
    assert not has_live_key(sessions)  # read-only keys do not count as an admin key
    assert revoke_key(sessions, row.id) and not revoke_key(sessions, row.id)
    assert verify_key(sessions, key) is None
    assert [k.revoked_at is not None for k in list_keys(sessions)] == [True]


def test_events_fold_into_stage_progress_and_metrics(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("job_started", metrics={"stages": ["ingest", "memory", "traces"]})
    log.emit("stage_skipped", "ingest", metrics={"users": 8})
    log.emit("stage_started", "memory")
    log.emit("progress", "memory", done=3, total=10, metrics={"users_per_s": 2.5})
    progress = JobProgress()
    offset = 0
    for offset, event in read_events(log.path):  # noqa: B007 - the last offset is kept
        progress.apply(event)
    assert progress.stage == "memory"
    assert progress.progress["ingest"]["state"] == "skipped" and progress.metrics["ingest"] == {"users": 8}
    assert progress.progress["memory"] == {"state": "running", "done": 3, "total": 10, "metrics": {"users_per_s": 2.5}}
    assert progress.progress["traces"]["state"] == "pending"

    log.emit("stage_finished", "memory", metrics={"users": 8, "seconds": 1.5})
    log.emit("stage_started", "traces")
    log.emit("stage_failed", "traces", message="RuntimeError: replica died")
    for offset, event in read_events(log.path, offset):  # noqa: B007, B020 - only the new lines
        progress.apply(event)
    assert progress.progress["memory"]["done"] == 10 and progress.progress["memory"]["state"] == "finished"
    assert progress.progress["traces"]["state"] == "failed"
    assert progress.error == "stage 'traces' failed: RuntimeError: replica died"


def test_non_finite_metrics_are_stored_as_null(store):
    job, _ = store.create(_spec(), "k")
    store.update(job.id, metrics={"train": {"loss": float("nan"), "grad_norm": float("inf"), "steps": [1, float("-inf")]}})
    assert store.get(job.id).metrics == {"train": {"loss": None, "grad_norm": None, "steps": [1, None]}}


def test_ids_and_cursors_no_row_can_have_are_not_found_not_errors(store):
    store.create(_spec(), "k")
    for job_id in ("job-\x00", "x" * 5000, "job-é"):
        with pytest.raises(JobNotFound):
            store.get(job_id)
    with pytest.raises(BadCursor):  # beyond the 32-bit sequence: Postgres would refuse to compare it
        store.page(cursor=encode_cursor(2**40))
    assert [j.name for j in store.page(cursor=encode_cursor(MAX_SEQ))[0]] == ["job"]
    assert verify_key(store.sessions, "prk_\x00_x") is None


def test_a_job_is_claimed_by_one_gateway_until_its_lease_expires(store):
    first, _ = store.create(_spec("a"), "k")
    second, _ = store.create(_spec("b"), "k")
    assert [j.id for j in store.claim("gw-1", lease_s=60)] == [first.id, second.id]
    assert store.claim("gw-2", lease_s=60) == []  # held, and not expired
    assert [j.id for j in store.claim("gw-1", lease_s=60)] == [first.id, second.id]  # renewed by its holder

    with pytest.raises(LeaseLost):
        store.update(first.id, holder="gw-2", state=JobState.running)
    store.update(first.id, holder="gw-1", state=JobState.running)

    _expire_leases(store)
    taken = store.claim("gw-2", lease_s=60)
    assert [j.id for j in taken] == [first.id, second.id] and {j.lease_owner for j in taken} == {"gw-2"}
    with pytest.raises(LeaseLost):  # the old holder's late write is refused
        store.update(first.id, holder="gw-1", stage="ingest")
    assert store.get(first.id).stage is None

    store.update(first.id, holder="gw-2", state=JobState.succeeded)
    ended = store.get(first.id)
    assert ended.lease_owner is None and ended.lease_expires_at is None  # an ended job holds nobody
    assert [j.id for j in store.claim("gw-2", lease_s=60)] == [second.id]  # ended jobs are never claimed
    assert store.release("gw-2") == 1
    assert [j.id for j in store.claim("gw-3", lease_s=60)] == [second.id]  # released: no need to wait


def test_claims_at_the_same_moment_never_share_a_job(store):
    ids = {store.create(_spec(f"j{i}"), "k")[0].id for i in range(30)}
    barrier = threading.Barrier(4)
    claimed: dict[str, list[str]] = {}

    def claim(owner):
        barrier.wait()
        claimed[owner] = [j.id for j in store.claim(owner, lease_s=60, limit=10)]

    threads = [threading.Thread(target=claim, args=(f"gw-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for owned in claimed.values() for job_id in owned]
    assert len(every) == len(set(every)) and set(every) <= ids  # nobody got a job another one holds
    with store.sessions() as session:
        owners = dict(session.execute(select(JobRow.id, JobRow.lease_owner)).all())
    assert all(owners[job_id] == owner for owner, owned in claimed.items() for job_id in owned)


def _at_once(call, engines):
    """`call(engine)` for every engine, each in its own thread, all let go at the same moment: what the
    calls returned, and what they raised."""
    barrier, results, errors = threading.Barrier(len(engines)), [], []

    def run(engine):
        barrier.wait()
        try:
            results.append(call(engine))
        except Exception as e:  # noqa: BLE001 - collected and asserted by the caller
            errors.append(e)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_gateways_starting_together_migrate_once(db_url):
    engines = [make_engine(db_url) for _ in range(3)]
    _, errors = _at_once(migrate, engines)
    with engines[0].connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    for engine in engines:
        engine.dispose()
    assert errors == []  # one migrates, the others wait for it, then find the schema at head


def _journal_mode(engine):
    with engine.connect() as connection:
        return connection.exec_driver_sql("PRAGMA journal_mode").scalar()


def test_gateways_opening_a_new_sqlite_file_together_all_get_wal(tmp_path):
    # SQLite refuses a switch to WAL made while another connection switches, without waiting its busy
    # timeout; each round opens a new file from six engines at once, as gateways starting together do.
    for round_ in range(50):
        engines = [make_engine(f"sqlite:///{tmp_path}/{round_}.db") for _ in range(6)]
        modes, errors = _at_once(_journal_mode, engines)
        for engine in engines:
            engine.dispose()
        assert errors == [] and modes == ["wal"] * len(engines)


def _expire_leases(store):
    with store.sessions.begin() as session:
        session.execute(update(JobRow).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1)))


def test_a_database_of_the_first_schema_is_brought_forward_with_its_jobs(db_url, tmp_path):
    from alembic import command
    from alembic.config import Config

    from prime_ray.service.db import MIGRATIONS

    engine = make_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text(
            "INSERT INTO jobs (id, name, state, spec, progress, metrics, submission_id, submitted, cancel_requested, "
            "events_offset, created_at, updated_at) VALUES ('job-old', 'old', 'running', '{}', '{}', '{}', "
            "'prime-ray-job-old', :yes, :no, 7, :now, :now)"), {"yes": True, "no": False, "now": utcnow()})
    engine.dispose()
    store = JobStore(open_database(db_url), str(tmp_path))
    old = store.get("job-old")
    assert old.state == "running" and old.events_offset == 7 and old.lease_owner is None
    assert [j.id for j in store.claim("gw", lease_s=60)] == ["job-old"]
    store.sessions.kw["bind"].dispose()
