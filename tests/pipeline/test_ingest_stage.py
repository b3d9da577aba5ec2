"""The ingest stage through the real runner: its files, its events, skipping, and failing clearly."""

import json
import shutil

import pytest

from prime_ray.data.store import read_examples, read_user_roles, read_users
from prime_ray.pipeline.events import read_events
from prime_ray.pipeline.runner import StageFailed, run_job
from prime_ray.spec import parse_spec


def _spec(tmp_path, source, task=None, **data):
    return parse_spec({
        "name": "ingest-job",
        "artifact_root": str(tmp_path / "artifacts"),
        "stages": ["ingest"],
        "data": {"source": source, "task": task or {"kind": "rating"}, "split": {"held_out_users": 0.34}, **data},
    })


def test_ingest_writes_its_files_reports_problems_and_skips_when_unchanged(tmp_path, fixtures_dir):
    data = tmp_path / "users.jsonl"
    shutil.copy(fixtures_dir / "data" / "native" / "bad.jsonl", data)
    spec = _spec(tmp_path, {"format": "jsonl", "path": str(data)})

    result = run_job(spec)
    stage_dir = result.job_dir / "ingest"
    outcome = result.outcome("ingest")
    assert outcome.status == "ran"
    counts = outcome.manifest.counts
    # bad.jsonl: 8 malformed rows, 1 rating out of range (user j), 1 item of user a's history that is i's query
    assert counts["users"] == 2 and counts["problems"] == 10 and counts["leaked_items_removed"] == 1
    assert counts["train_users"] == 1 and counts["test_users"] == 1
    assert set(outcome.manifest.outputs) == {"users.parquet", "examples.parquet", "problems.jsonl"}

    problems = [json.loads(line) for line in (stage_dir / "problems.jsonl").read_text().splitlines()]
    assert len(problems) == 10
    assert problems[1] == {"file": str(data), "line": 3, "field": "history.2.output", "message": "field required"}
    users = read_users(stage_dir / "users.parquet")
    assert set(users) == {"a", "i"}
    roles = read_user_roles(stage_dir / "users.parquet")
    examples = read_examples(stage_dir / "examples.parquet")
    assert counts["examples_train"] + counts["examples_test_query"] + counts["examples_test_user"] == len(examples)
    train_user = next(u for u, r in roles.items() if r == "train")
    assert {e.example_id for e in examples if e.split == "train"} == {f"{train_user}/{i.id}" for i in users[train_user].history}

    logs = [e.message for _, e in read_events(result.job_dir / "events.jsonl") if e.kind == "log"]
    assert any(m.startswith("10 problem(s)") for m in logs)
    assert f"{data}:3: history.2.output: field required" in logs

    again = run_job(spec)
    assert again.outcome("ingest").status == "skipped"

    with data.open("a") as f:  # edited data under the same path is a new input
        f.write(json.dumps({"user_id": "new", "history": [{"id": "h", "input": "x", "output": "3"}]}) + "\n")
    assert run_job(spec).outcome("ingest").manifest.counts["users"] == 3


def test_movielens_slice_through_the_stage(tmp_path, fixtures_dir):
    spec = _spec(tmp_path, {"format": "movielens-100k", "path": str(fixtures_dir / "data" / "movielens"), "task": "genre"},
                 task={"kind": "label", "labels": ["Action", "Animation", "Comedy", "Crime", "Drama", "Mystery"]},
                 max_history=3)
    result = run_job(spec)
    counts = result.outcome("ingest").manifest.counts
    assert counts["problems"] == 0 and counts["users"] == 5
    users = read_users(result.job_dir / "ingest" / "users.parquet")
    assert all(len(u.history) <= 3 for u in users.values())


def test_no_valid_users_fails_with_a_clear_error(tmp_path):
    data = tmp_path / "users.jsonl"
    data.write_text('{"user_id": "x"\n[1]\n')
    with pytest.raises(StageFailed, match=r"no valid users in jsonl .*users.jsonl \(2 problem\(s\); first: .*:1: invalid JSON"):
        run_job(_spec(tmp_path, {"format": "jsonl", "path": str(data)}))


def test_missing_file_fails_naming_it(tmp_path):
    with pytest.raises(StageFailed, match="cannot read .*absent.jsonl"):
        run_job(_spec(tmp_path, {"format": "jsonl", "path": str(tmp_path / "absent.jsonl")}))
