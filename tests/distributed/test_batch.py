"""GeneralistMap on a local Ray with the tiny model: the worker contract, users packed into calls, one
failing user isolated, resume after a crash mid-batch, and teardown when the driver is interrupted."""

import json

import pytest
from waiting import wait_until

from prime_ray.distributed import batch
from prime_ray.distributed.batch import (
    FAILURES_FILE,
    GeneralistMap,
    WorkerContractError,
    batch_rows_per_user,
    check_worker,
    part_path,
    users_per_call,
)
from prime_ray.evaluation.answering import AnswerConfig, AnswerUser
from prime_ray.memory.profiles import ProfileConfig, ProfileWriter
from prime_ray.spec import RatingTask, parse_spec

PROMPT = "<|im_start|>user\nRate movie {i} for user {u}.<|im_end|>\n<|im_start|>assistant\n"


def _spec(tmp_path):
    return parse_spec({
        "name": "batch-test",
        "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": "x"}, "task": {"kind": "rating"}},
        # 2 rows per user, 4 rows per call: two users share each worker call
        "generalist": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "rows_per_call": 4, "max_concurrency": 2},
        "artifact_root": str(tmp_path),
    })


def _rows(users, bad=()):
    return [{"user_id": u, "example_id": f"{u}/m{i}", "prompt": "" if u in bad else PROMPT.format(i=i, u=u)}
            for u in users for i in range(2)]


CONFIG = AnswerConfig(task=RatingTask(), max_new_tokens=4, temperature=0.0, seed=0)


def test_the_worker_contract_is_checked_with_a_clear_error():
    check_worker(AnswerUser, CONFIG, _rows(["u0"]))
    with pytest.raises(WorkerContractError, match=r"row 1 \(user 'u0'\) lacks 'prompt'"):
        check_worker(AnswerUser, CONFIG, [_rows(["u0"])[0], {"user_id": "u0", "example_id": "x"}])
    with pytest.raises(WorkerContractError, match="row 0 .*lacks 'user_id'"):
        check_worker(AnswerUser, CONFIG, [{"example_id": "x", "prompt": "p"}])
    with pytest.raises(WorkerContractError, match="AnswerUser takes a AnswerConfig config, got ProfileConfig"):
        check_worker(AnswerUser, ProfileConfig.model_construct(), [])
    with pytest.raises(WorkerContractError, match="config_type must be a pydantic model"):
        check_worker(type("NoConfig", (), {"__call__": lambda self, rows: rows}), CONFIG)

    class NoKeys:
        config_type = AnswerConfig

        def __init__(self, generalist, config):
            pass

        def __call__(self, rows):
            return rows

    with pytest.raises(WorkerContractError, match="NoKeys.required_keys must be a tuple"):
        check_worker(NoKeys, CONFIG)
    NoKeys.required_keys = ()

    class ThreeArgs(NoKeys):
        def __init__(self, generalist, config, extra):
            pass

    with pytest.raises(WorkerContractError, match=r"ThreeArgs\(generalist, config\) cannot be called"):
        check_worker(ThreeArgs, CONFIG)

    class NotCallable:
        config_type = AnswerConfig
        required_keys = ()

        def __init__(self, generalist, config):
            pass

    with pytest.raises(WorkerContractError, match=r"NotCallable: a worker must be a class with __call__"):
        check_worker(NotCallable, CONFIG)
    with pytest.raises(WorkerContractError, match="a worker must be a class"):
        check_worker(AnswerUser(None, CONFIG), CONFIG)  # an instance, not the class


def test_users_are_packed_whole_into_calls():
    assert users_per_call(rows_per_user=2, rows_per_call=16) == 8
    assert users_per_call(rows_per_user=3, rows_per_call=16) == 5
    assert users_per_call(rows_per_user=40, rows_per_call=16) == 1  # a big user still goes, alone


def test_calls_are_sized_by_the_largest_group_of_the_workers_batch_key():
    # two users, each with 3 direct rows of G, 2 think rows of G and 1 think row of a student
    rows = [{"adapter": a, "prefix": p} for a, p in [(None, ""), (None, ""), (None, ""), (None, "<think>\n"),
                                                      (None, "<think>\n"), ("prime", "<think>\n")]]
    users = {"u0": rows, "u1": rows}
    assert batch_rows_per_user(users, AnswerUser.batch_key) == 3  # (None, direct): 6 rows of 2 users
    assert batch_rows_per_user(users, None) == 6  # no key: every row in one group
    assert batch_rows_per_user({}, None) == 0


@pytest.fixture
def serve_ended():
    """`GeneralistMap` leaves Serve running for the next stage: end it as a job's end does, so a later test
    on the shared Ray starts Serve with the options it needs (a student's HTTP proxy)."""
    yield
    batch.end_serve()


def _serve_controller_running() -> bool:
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return False
    return True


@pytest.mark.ray
def test_a_kept_app_is_taken_over_by_the_same_deployment_and_released_for_another(ray_local, tmp_path, serve_ended):
    from ray import serve

    spec = _spec(tmp_path)
    with GeneralistMap(spec, app_name="kept-a", keep=True) as g:
        first = g.map_users(_rows(["u0"]), AnswerUser, CONFIG).rows
    assert serve.status().applications["kept-a"].status == "RUNNING"  # left running for the next block

    with GeneralistMap(spec, app_name="kept-b", keep=True) as g:
        assert g.app_name == "kept-a"  # taken over: no second deployment
        assert g.map_users(_rows(["u0"]), AnswerUser, CONFIG).rows == first
    assert set(serve.status().applications) == {"kept-a"}

    # another deployment (other batch settings): the kept app is deleted before it deploys
    other = spec.model_copy(update={"generalist": spec.generalist.model_copy(update={"max_batch_size": 4})})
    with GeneralistMap(other, app_name="kept-c") as g:
        assert g.app_name == "kept-c"
        assert wait_until(lambda: "kept-a" not in serve.status().applications, timeout=60)
    # not kept: deleted on exit; Serve itself runs on until the job's end (`end_serve`)
    assert wait_until(lambda: not serve.status().applications, timeout=60)
    assert _serve_controller_running()
    batch.end_serve()
    assert not _serve_controller_running()


@pytest.mark.ray
def test_failing_user_alone_resume_after_a_crash_mid_batch_and_teardown(ray_local, tmp_path, monkeypatch, serve_ended):
    spec = _spec(tmp_path)
    users = [f"u{i}" for i in range(6)]
    parts = tmp_path / "parts"
    with GeneralistMap(spec, app_name="batch-test") as g:
        # a row breaking the contract stops the run before any worker starts
        with pytest.raises(WorkerContractError, match="lacks 'prompt'"):
            g.map_users([{"user_id": "u0", "example_id": "x"}], AnswerUser, CONFIG)

        # one failing user (an empty prompt makes the engine raise) fails alone; its call's partner goes on
        result = g.map_users(_rows(users, bad={"u1"}), AnswerUser, CONFIG, parts_dir=parts)
        assert list(result.failures) == ["u1"] and "empty prompt" in result.failures["u1"]
        assert sorted({r["user_id"] for r in result.rows}) == ["u0", "u2", "u3", "u4", "u5"]
        assert len(result.rows) == 10 and all(r["completion_tokens"] > 0 for r in result.rows)
        assert [json.loads(line)["user_id"] for line in (parts / FAILURES_FILE).read_text().splitlines()] == ["u1"]
        assert not part_path(parts, "u1").exists()

        # the retry redoes only the failed user
        done = []
        again = g.map_users(_rows(users), AnswerUser, CONFIG, parts_dir=parts,
                            on_user_done=lambda u, rows, n, total: done.append((u, n, total)))
        assert done == [("u1", 6, 6)] and again.resumed == 5 and not again.failures
        assert [r["example_id"] for r in again.rows] == [r["example_id"] for r in _rows(users)]
        assert again.rows[:2] == result.rows[:2]  # u0's rows read back from its part

        # a driver crash after the first part of a fresh run: the re-run redoes only the users in flight
        fresh = tmp_path / "fresh"
        real_write_part, written = batch.write_part, []

        def crash_after_first_part(*args, **kwargs):
            written.append(real_write_part(*args, **kwargs))
            raise RuntimeError("driver lost mid-batch")

        monkeypatch.setattr(batch, "write_part", crash_after_first_part)
        with pytest.raises(RuntimeError, match="driver lost"):
            g.map_users(_rows(users), AnswerUser, CONFIG, parts_dir=fresh)
        monkeypatch.setattr(batch, "write_part", real_write_part)
        [first] = written
        kept = first.stat().st_mtime_ns
        redone = []
        resumed = g.map_users(_rows(users), AnswerUser, CONFIG, parts_dir=fresh,
                              on_user_done=lambda u, *_: redone.append(u))
        assert resumed.resumed == 1 and len(redone) == 5 and len(resumed.rows) == 12
        assert first.stat().st_mtime_ns == kept
        assert sorted(p.name for p in fresh.glob("*.jsonl")) == sorted(part_path(fresh, u).name for u in users)

        # profiles through the same component
        profile_config = ProfileConfig(memory=spec.memory.model_copy(update={"profile_max_new_tokens": 4}), seed=0)
        profiles = g.map_users([{"user_id": u, "prompt": PROMPT.format(i=0, u=u)} for u in ("a", "b")],
                               ProfileWriter, profile_config)
        assert [r["user_id"] for r in profiles.rows] == ["a", "b"]
        assert all(isinstance(r["profile"], str) and 0 < r["completion_tokens"] <= 4 for r in profiles.rows)

        # Ctrl-C in the driver mid-run: the error propagates and the with block deletes the app
        def interrupt(*_):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            g.map_users(_rows(users), AnswerUser, CONFIG, on_user_done=interrupt)
    # the app and the Data workers are gone: every CPU is free again
    assert wait_until(lambda: ray_local.available_resources().get("CPU", 0) == 2, timeout=60)
