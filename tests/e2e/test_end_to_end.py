"""Every stage through the real runner: ingest → memory → traces → train → eval on a local Ray.

The tiny random model on a small native-JSONL fixture (4 users, 1 held out): Serve hosts the
generalist and the students, Ray Data drives them, Ray Train with DeepSpeed ZeRO-2 trains both
students. The model writes nonsense, so the numbers mean nothing; what is checked is that every
artifact exists and parses, that every mode was evaluated, and that a second run skips every stage.
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from prime_ray.pipeline.events import read_events
from prime_ray.pipeline.runner import run_job
from prime_ray.spec import EvalMode, parse_spec
from prime_ray.training.artifacts import adapter_dir

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "e2e" / "users.jsonl"
STAGES = ["ingest", "memory", "traces", "train", "eval"]


def _spec(root: Path):
    return parse_spec({
        "name": "e2e",
        "seed": 0,
        "model": {"name_or_path": "tiny-test"},
        "data": {
            "source": {"format": "jsonl", "path": str(FIXTURE)},
            "task": {"kind": "rating", "min": 1, "max": 5},
            "split": {"held_out_users": 0.25},
            "max_history": 5,
            "max_train_examples_per_user": 2,
        },
        "memory": {"top_k": 2, "profile_max_new_tokens": 8},
        "generalist": {"max_batch_size": 16, "max_concurrency": 1, "num_cpus_per_replica": 1},
        "traces": {"samples_per_example": 1, "max_new_tokens": 16},
        # A large learning rate: two steps must move the adapters enough to change greedy answers.
        "train": {"zero_stage": 2, "num_workers": 2, "num_cpus_per_worker": 1, "max_steps": 2, "learning_rate": 0.05,
                  "micro_batch_size": 2, "max_length": 256, "fast_thinking_baseline": True,
                  "log_every_steps": 1, "checkpoint_every_steps": 2},
        "eval": {"max_new_tokens": 16, "bootstrap_samples": 100, "sample_traces_per_mode": 1},
        "artifact_root": str(root),
    })


@pytest.mark.ray
@pytest.mark.slow
def test_every_stage_runs_writes_its_artifacts_and_resumes(ray_local, tmp_path):
    spec = _spec(tmp_path)
    result = run_job(spec)
    job = tmp_path / "e2e"
    assert [s.name for s in result.stages] == STAGES
    assert all(s.status == "ran" for s in result.stages)

    examples = pq.read_table(job / "ingest" / "examples.parquet").to_pylist()
    splits = {e["split"] for e in examples}
    assert splits == {"train", "test_query", "test_user"}
    assert pq.read_table(job / "memory" / "memory.parquet").num_rows == len(examples)
    traces = pq.read_table(job / "traces" / "traces.parquet")
    assert traces.num_rows == sum(e["split"] == "train" for e in examples)  # 1 sample per training example
    for student in ("prime", "fast"):
        assert (adapter_dir(job / "train", student) / "adapter_config.json").is_file()
    with Image.open(job / "train" / "curves.png") as image:
        assert image.format == "PNG"

    report = json.loads((job / "eval" / "report.json").read_text())
    assert report["modes"] == [m.value for m in EvalMode] and report["skipped_modes"] == {}
    assert report["splits"] == ["test_query", "test_user"]
    for split in report["splits"]:
        n = sum(e["split"] == split for e in examples)
        for _mode, numbers in report["results"][split].items():
            assert numbers["n"] == n
            assert set(numbers["metrics"]) == {"mae", "rmse", "accuracy"}
            mae = numbers["metrics"]["mae"]["value"]
            assert 0 <= mae <= 4  # unparsed answers cost the full range, 4
            assert 0 <= numbers["health"]["parse_rate"]["value"] <= 1
        assert {"ref:global-mean", "ref:most-frequent", "ref:user-mean"} <= set(report["results"][split])
    assert {c["split"] for c in report["claims"]} == set(report["splits"]) and len(report["claims"]) == 6
    assert all(c["verdict"] in ("shown", "not shown at this size", "reversed") for c in report["claims"])
    assert any(p["a"] == "prime-personal-think" and p["b"] == "generalist-personal-direct" for p in report["paired"])
    assert set(report["trace_gains"]) == {"kept", "rejected"}
    markdown = (job / "eval" / "report.md").read_text()
    assert all(m.value in markdown for m in EvalMode)
    assert "Claims of the method on test_user:" in markdown and "*ref:user-mean*" in markdown
    with Image.open(job / "eval" / "report.png") as image:
        assert image.format == "PNG"
    predictions = [json.loads(line) for line in (job / "eval" / "predictions.jsonl").read_text().splitlines()]
    evaluated = sum(e["split"] != "train" for e in examples)
    assert len(predictions) == evaluated * len(EvalMode)
    texts = {(p["mode"], p["example_id"]): p["text"] for p in predictions}
    # think modes generate from inside the think block: every one of their answers has a trace
    thinking = [p for p in predictions if p["mode"].endswith("think")]
    assert thinking and all(p["text"].startswith("<think>\n") and p["trace"] is not None for p in thinking)
    ids = {p["example_id"] for p in predictions}
    # The students really are G plus their adapters: their direct answers are not G's.
    for student in ("prime", "fast"):
        assert any(texts[f"{student}-direct", i] != texts["generalist-direct", i] for i in ids)
    samples = [json.loads(line) for line in (job / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {s["mode"] for s in samples} == {m.value for m in EvalMode}
    events = [e for _, e in read_events(job / "events.jsonl")]
    eval_progress = [e for e in events if e.kind == "progress" and e.stage == "eval"]
    assert eval_progress[-1].done == eval_progress[-1].total == len(predictions)  # every generation counted

    again = run_job(spec)
    assert [s.status for s in again.stages] == ["skipped"] * len(STAGES)
