"""Ray Train + DeepSpeed + PEFT on a local Ray with 2 CPU workers and the tiny model.

Two runs keep this affordable: a ZeRO-3 run of two students whose worker is killed after a checkpoint
of the second (it must resume and end with the weights of uninterrupted plain-PyTorch runs of the same
steps), and the train stage with ZeRO-2, packing, the fast-thinking baseline and merged models.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from prime_ray.data.schema import Example, Item
from prime_ray.data.store import write_examples
from prime_ray.memory.store import ExampleMemory, write_memory
from prime_ray.models.loading import load_model
from prime_ray.pipeline.artifacts import JobArtifacts
from prime_ray.pipeline.events import EventLog, read_events
from prime_ray.pipeline.manifest import output_digests
from prime_ray.pipeline.stage import StageContext
from prime_ray.spec import ModelSpec, TrainSpec, parse_spec
from prime_ray.traces.store import write_traces
from prime_ray.training.artifacts import adapter_dir, merged_dir, read_metrics
from prime_ray.training.collate import collate_rows
from prime_ray.training.engine import EngineConfig, create_train_engine
from prime_ray.training.plan import step_plan
from prime_ray.training.sequences import IGNORE_INDEX, TrainSequence

pytestmark = pytest.mark.ray

TINY = ModelSpec(name_or_path="tiny-test")


def _pattern_sequences(n: int) -> list[TrainSequence]:
    """Random prompts, completions with a learnable pattern (the answer token follows from the index)."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        prompt = [rng.randrange(10, 700) for _ in range(rng.randrange(10, 30))]
        completion = [5, 6, 7, 10 + i % 5, 2]
        term = "think" if i % 2 else "direct"
        if term == "think":
            completion = [8] * rng.randrange(3, 10) + completion
        out.append(TrainSequence(f"u/{i}", term, tuple(prompt + completion), tuple([IGNORE_INDEX] * len(prompt) + completion)))
    return out


def _plain_reference(sequences, train: TrainSpec, total_steps: int, world: int, think_weight: float):
    """The same steps in one process with the plain-PyTorch engine: every worker's micro-batches of a
    step in one step (the loss is the step's global token mean either way)."""
    plan = step_plan(sequences, train, world_size=world, max_steps=total_steps)
    engine = create_train_engine(EngineConfig(model=TINY, train=train, total_steps=total_steps,
                                              think_weight=think_weight, backend="torch"))
    for step in range(total_steps):
        batches = [collate_rows(sequences, rows, pad_id=0, packed=train.packing)
                   for rank in range(world) for rows in plan.micro_batches(step, rank)]
        engine.train_step(batches)
    return engine.module


class CrashOnce:
    """Fault injection: the last worker kills its own process after the last student's first
    checkpoint is registered, once (the marker file records it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __call__(self, event) -> None:
        from prime_ray.distributed.train import wait_until_registered

        if event.student_index != event.students - 1 or event.rank != event.world_size - 1 or self.marker.exists():
            return
        wait_until_registered(event.checkpoint_dir_name)
        self.marker.write_text(event.checkpoint_dir_name)
        os.kill(os.getpid(), signal.SIGKILL)


# Ray Train workers cannot import this test module by name: send the hook by value.
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_zero3_run_survives_a_killed_worker_and_matches_uninterrupted_runs(ray_local, tmp_path):
    """Two students in one run; a worker is killed after the second student's step-4 checkpoint."""
    from peft import get_peft_model_state_dict

    from prime_ray.distributed.train import StudentRun, train_students

    sequences = _pattern_sequences(64)
    direct_only = [s for s in sequences if s.term == "direct"]
    train = TrainSpec(zero_stage=3, zero3_param_persistence_threshold=0, learning_rate=5e-2, micro_batch_size=4, num_workers=2,
                      num_cpus_per_worker=1, max_steps=8, checkpoint_every_steps=4, log_every_steps=2, max_failures=1)
    total = step_plan(sequences, train, world_size=2, max_steps=train.max_steps).total_steps
    events = EventLog(tmp_path / "events.jsonl")
    marker = tmp_path / "killed"
    trained = train_students(
        [StudentRun("prime", 1.0, sequences), StudentRun("fast", 0.0, direct_only)], model=TINY, train=train,
        total_steps=total, pad_id=0, train_dir=tmp_path, metrics_path=tmp_path / "metrics.jsonl",
        progress=events.for_stage("train"), after_checkpoint=CrashOnce(marker),
    )

    # A worker process was killed after the fast student's step-4 checkpoint; the run resumed from it,
    # keeping the PRIME student it had finished.
    assert marker.read_text() == "checkpoint_fast_step_000004"
    messages = [e.message for _, e in read_events(tmp_path / "events.jsonl") if e.kind == "log"]
    assert [m for m in messages if "resumes" in m] == ["fast student resumes at step 4 of 8"]
    for student in ("prime", "fast"):
        records = read_metrics(tmp_path / "metrics.jsonl", student)
        assert [r["step"] for r in records] == [2, 4, 6, 8]
        # ZeRO-3 really partitions: each of the 2 workers holds half of every parameter.
        assert all(r["params_local_fraction"] == pytest.approx(0.5, abs=0.01) for r in records)
        assert records[-1]["direct"] < records[0]["direct"]
        assert all(r["lr"] > 0 and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in records)
    prime_records = read_metrics(tmp_path / "metrics.jsonl", "prime")
    assert prime_records[-1]["think"] < prime_records[0]["think"]
    assert [t.steps for t in trained] == [total, total] == [8, 8]

    # Same weights as the same 8 steps of each student without Ray, DeepSpeed or the crash.
    # (Adam magnifies float rounding on near-zero gradients, so compare the weights as a whole.)
    for student, data, weight in zip(trained, (sequences, direct_only), (1.0, 0.0)):
        expected = get_peft_model_state_dict(_plain_reference(data, train, total, world=2, think_weight=weight))
        saved = load_file(student.adapter_dir / "adapter_model.safetensors")
        assert saved.keys() == expected.keys() and len(saved) == 16
        for key, value in expected.items():
            assert (saved[key] - value).norm() <= 1e-3 * value.norm() + 1e-6, (student.student, key)

    # The adapter loads with PEFT and changes the model's outputs.
    base, _ = load_model(TINY)
    ids = torch.tensor([sequences[0].input_ids])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = PeftModel.from_pretrained(base, str(trained[0].adapter_dir))(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-2


def _write_stage_inputs(root):
    users = {f"u{u}": [Item(id=f"h{i}", input=f"Movie {u}-{i} (199{i})", output=str((u + i) % 5 + 1)) for i in range(8)]
             for u in range(3)}
    examples, memory, traces = [], [], []
    for user, history in users.items():
        for item in history:
            ex = Example(example_id=f"{user}/{item.id}", user_id=user, split="train", input=item.input,
                         output=item.output, memory_ids=[h.id for h in history if h.id != item.id])
            examples.append(ex)
            episodes = tuple(h for h in history if h.id != item.id)[:3]
            memory.append((ex, ExampleMemory(f"{user} rates old movies well.", episodes, (1.0, 0.5, 0.2))))
            if int(item.id[1:]) % 2 == 0:
                traces.append({"user_id": user, "example_id": ex.example_id, "sample_index": 0,
                               "trace": f"The user gave similar movies {item.output}.", "answer": item.output,
                               "gold": item.output, "kept": True, "generated_tokens": 12, "model": "tiny-test",
                               "config_hash": "x", "likelihood_gain": 0.5})
    held_out = Example(example_id="u9/q0", user_id="u9", split="test_user", input="Movie 9", output="3", memory_ids=[])
    for stage in ("ingest", "memory", "traces"):
        (root / stage).mkdir(parents=True)
    write_examples(root / "ingest" / "examples.parquet", examples + [held_out])
    write_memory(root / "memory" / "memory.parquet", memory, retriever="bm25")
    write_traces(root / "traces" / "traces.parquet", traces)
    return len(examples), len(traces)


def test_train_stage_trains_prime_and_fast_students_with_zero2_and_packing(ray_local, tmp_path):
    from prime_ray.pipeline.stages.train import TrainStage

    spec = parse_spec({
        "name": "job", "artifact_root": str(tmp_path / "artifacts"), "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": "u.jsonl"}, "task": {"kind": "rating"}},
        "train": {"zero_stage": 2, "lambda": 0.5, "fast_thinking_baseline": True, "merge_adapter": True,
                  "packing": True, "max_length": 320, "micro_batch_size": 1, "num_workers": 2,
                  "num_cpus_per_worker": 1, "learning_rate": 3e-2, "epochs": 1, "log_every_steps": 1,
                  "checkpoint_every_steps": 4, "lora": {"r": 4, "alpha": 8}},
    })
    n_examples, n_traces = _write_stage_inputs(tmp_path / "inputs")
    artifacts = JobArtifacts(spec.artifact_root, spec.name)
    events = EventLog(artifacts.events_path)
    stage = TrainStage()
    ctx = StageContext(spec=spec, artifacts=artifacts, out_dir=artifacts.stage_dir("train"),
                       inputs={s: tmp_path / "inputs" / s for s in ("ingest", "memory", "traces")},
                       progress=events.for_stage("train"), events=events)
    result = stage.run(ctx)
    out = ctx.out_dir

    assert result.counts["examples"] == n_examples  # the held-out user's example is not trained on
    assert result.counts["direct_sequences"] == n_examples and result.counts["think_sequences"] == n_traces
    steps = result.counts["steps"]
    prime, fast = read_metrics(out / "metrics.jsonl", "prime"), read_metrics(out / "metrics.jsonl", "fast")
    assert [r["step"] for r in prime] == [r["step"] for r in fast] == list(range(1, steps + 1))
    assert sum(r["think_tokens"] for r in prime) > 0
    assert all(r["think_tokens"] == 0 and r["think"] is None for r in fast)
    assert all(r["think_weight"] == 0.5 for r in prime) and all(r["think_weight"] == 0.0 for r in fast)
    assert all(r["params_local_fraction"] == 1.0 for r in prime)  # ZeRO-2 keeps whole parameters
    for records in (prime, fast):
        assert records[-1]["direct"] < records[0]["direct"]
    think = [r["think"] for r in prime if r["think"] is not None]
    assert think[-1] < think[0]

    for student in ("prime", "fast"):
        config = json.loads((adapter_dir(out, student) / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["peft_type"] == "LORA"
        assert (merged_dir(out, student) / "config.json").is_file()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    digests = output_digests(out, stage.outputs_for(spec))
    assert any(k.startswith("fast/adapter/") for k in digests) and any(k.startswith("prime/merged/") for k in digests)
    progress = [e for _, e in read_events(artifacts.events_path) if e.kind == "progress"]
    assert progress[-1].done == progress[-1].total == 2 * steps
    assert result.metrics["prime_think"] == pytest.approx(think[-1], abs=1e-4)
    assert result.metrics["fast_think"] is None

    # The merged model is the base with the adapter folded in: same logits as base + adapter.
    base, tokenizer = load_model(TINY, dtype="float32")  # as trained: the comparison is to 1e-4
    ids = tokenizer("Movie 1-2 (1992)", return_tensors="pt")["input_ids"]
    merged, _ = load_model(ModelSpec(name_or_path=str(merged_dir(out, "prime"))), dtype="float32")
    with torch.no_grad():
        with_adapter = PeftModel.from_pretrained(base, str(adapter_dir(out, "prime")))(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, with_adapter, atol=1e-4, rtol=1e-4)
