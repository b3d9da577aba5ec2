"""The memory and traces stages through the real runner on a local Ray with the tiny model.

Serve hosts the tiny generalist, Ray Data drives it over user shards, the stages write their tables
and statistics. A run that crashes after the first user's part is written resumes: the re-run
generates only the other users' rows. (A random tiny model writes nonsense, so almost every trace
is rejected: here the statistics must add up; the keep path is tested on hand-written traces.)
"""

import json
import logging

import pyarrow.parquet as pq
import pytest

from prime_ray.distributed import batch
from prime_ray.memory.store import read_memory
from prime_ray.pipeline.events import read_events
from prime_ray.pipeline.runner import StageFailed, run_job
from prime_ray.spec import parse_spec
from prime_ray.traces.store import read_kept_traces

MOVIES = [
    ("Star Wars (1977) | Action|Adventure|Sci-Fi", "5"), ("Clueless (1995) | Comedy|Romance", "2"),
    ("Heat (1995) | Action|Crime|Thriller", "4"), ("Casablanca (1942) | Drama|Romance|War", "3"),
    ("Alien (1979) | Action|Horror|Sci-Fi", "5"), ("Fargo (1996) | Crime|Drama|Thriller", "4"),
]


def _users_file(tmp_path):
    lines = []
    for u in range(4):
        history = [{"id": f"m{i}", "input": title, "output": out, "timestamp": 880000000 + 1000 * i}
                   for i, (title, out) in enumerate(MOVIES[u : u + 4])]
        queries = [{"id": "q0", "input": "Die Hard (1988) | Action|Thriller", "output": "4"}]
        lines.append(json.dumps({"user_id": f"u{u}", "profile": {"age": 20 + u}, "history": history, "queries": queries}))
    path = tmp_path / "users.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _spec(tmp_path):
    return parse_spec({
        "name": "traces-it",
        "seed": 0,
        "model": {"name_or_path": "tiny-test"},
        "data": {
            "source": {"format": "jsonl", "path": str(_users_file(tmp_path))},
            "task": {"kind": "rating", "min": 1, "max": 5},
            "split": {"held_out_users": 0.25},
            "max_train_examples_per_user": 2,
        },
        "memory": {"top_k": 2, "profile_max_new_tokens": 12},
        "generalist": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "max_concurrency": 2, "rows_per_call": 4,
                       "num_cpus_per_replica": 1},
        "traces": {"samples_per_example": 2, "max_new_tokens": 16},
        "stages": ["traces"],
        "artifact_root": str(tmp_path / "artifacts"),
    })


@pytest.mark.ray
def test_memory_and_traces_stages_and_resume_after_a_crash(ray_local, tmp_path, monkeypatch, caplog):
    from ray import serve

    caplog.set_level(logging.INFO, logger="prime_ray.distributed.batch")
    spec = _spec(tmp_path)
    real_write_part = batch.write_part
    written = []

    def crash_after_first_part(parts_dir, *args, **kwargs):
        path = real_write_part(parts_dir, *args, **kwargs)
        if parts_dir.parent.name == "traces":  # the memory stage's parts go through too
            written.append(path)
            raise RuntimeError("driver lost after the first user shard")
        return path

    monkeypatch.setattr(batch, "write_part", crash_after_first_part)
    with pytest.raises(StageFailed, match="traces.*driver lost"):
        run_job(spec)
    monkeypatch.setattr(batch, "write_part", real_write_part)
    # the traces stage ran on the app the memory stage kept for it; the failed job left no app behind
    assert "taking over the running Serve app 'traces-it-memory-generalist'" in caplog.text
    assert not serve.status().applications

    job = tmp_path / "artifacts" / "traces-it"
    [first_part] = written
    assert sorted(p.name for p in (job / "traces" / "parts").glob("*.jsonl")) == [first_part.name]
    first_rows = len(first_part.read_text().splitlines())
    first_mtime = first_part.stat().st_mtime_ns

    result = run_job(spec)
    assert [(s.name, s.status) for s in result.stages] == [("ingest", "skipped"), ("memory", "skipped"), ("traces", "ran")]
    assert not serve.status().applications

    # memory: one row per example of every split, episodes from the example's own pool, a profile per user
    memory = read_memory(job / "memory" / "memory.parquet")
    examples = pq.read_table(job / "ingest" / "examples.parquet").to_pylist()
    assert set(memory) == {e["example_id"] for e in examples}
    for e in examples:
        assert {item.id for item in memory[e["example_id"]].episodes} <= set(e["memory_ids"])
        assert len(memory[e["example_id"]].episodes) == min(2, len(e["memory_ids"]))
        assert memory[e["example_id"]].profile is not None
    memory_manifest = json.loads((job / "memory" / "manifest.json").read_text())
    assert memory_manifest["counts"]["profiles"] == 4 and memory_manifest["counts"]["examples"] == len(examples)

    # traces: every training example sampled twice; the resumed run generated only the missing users
    train = [e for e in examples if e["split"] == "train"]
    table = pq.read_table(job / "traces" / "traces.parquet")
    rows = table.to_pylist()
    assert len(rows) == 2 * len(train) and {r["example_id"] for r in rows} == {e["example_id"] for e in train}
    assert all(r["error"] is None and r["raw_text"] for r in rows)
    assert first_part.stat().st_mtime_ns == first_mtime
    counts = json.loads((job / "traces" / "manifest.json").read_text())["counts"]
    metrics = json.loads((job / "traces" / "manifest.json").read_text())["metrics"]
    assert counts["users"] == 3 and counts["users_resumed"] == 1
    assert counts["rows_generated_this_run"] == len(rows) - first_rows
    assert len(list((job / "traces" / "parts").glob("*.jsonl"))) == 3

    # the statistics add up: a funnel from generated to kept, tokens counted, tokens/s measured
    assert counts["traces_generated"] == len(rows) and counts["examples"] == len(train)
    funnel = [counts["traces_generated"]] + [counts[f"after_{f}"] for f in metrics["filter_order"]]
    assert funnel == sorted(funnel, reverse=True)
    assert counts["kept"] == funnel[-1] == sum(r["kept"] for r in rows)
    assert sum(len(v) for v in read_kept_traces(job / "traces" / "traces.parquet").values()) == counts["kept"]
    assert counts["tokens_generated"] == sum(r["generated_tokens"] for r in rows) > 0
    assert metrics["tokens_per_s"] > 0
    verdicts = [r["verdicts"] for r in rows if r["verdicts"] is not None]
    assert verdicts and all(set(v) == {"parsed", "answer_match", "hint_not_leaked", "low_repetition", "length_in_range", "enough_gain"}
                            for v in verdicts)

    # progress events as shards finished, in the second run: users 2 and 3 of 3
    progress = [e for _, e in read_events(job / "events.jsonl") if e.kind == "progress" and e.stage == "traces"]
    assert [(e.done, e.total) for e in progress[-2:]] == [(2, 3), (3, 3)]
    # the replica's prefix cache found the hint-free prompts' openings (their hinted prompts came first)
    logs = [e.message or "" for _, e in read_events(job / "events.jsonl") if e.kind == "log" and e.stage == "traces"]
    assert any(m.startswith("prefix cache: ") and not m.startswith("prefix cache: 0 of") for m in logs)
