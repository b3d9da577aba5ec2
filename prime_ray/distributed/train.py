"""Ray Train wiring: students trained by one TorchTrainer, with DeepSpeed ZeRO and PEFT LoRA.

    train_students(...)  driver side: puts each student's sequences in the object store, runs one
                         TorchTrainer for all of them (one worker start-up), copies the adapters
                         out of the last checkpoint into train/<student>/adapter/.
    _train_loop(cfg)     per worker, student after student: the same base weights everywhere, LoRA,
                         deepspeed.initialize, the worker's deterministic share of every step
                         (StepPlan), metrics, checkpoints, the gathered adapter.

Fault tolerance: every `checkpoint_every_steps` each worker writes its DeepSpeed shard
(`engine.save_checkpoint`) and reports it with `ray.train.report`; Ray merges the shards into one
checkpoint, which also carries the adapters of the students already finished. When a worker dies,
Ray restarts the group (up to `max_failures` times) and the loop resumes from
`ray.train.get_checkpoint()`: finished students are skipped, the current one continues with
`engine.load_checkpoint`. The step plan is a pure function of the step, so a resumed run does exactly
the steps an uninterrupted one would. A new `fit` with the same storage folder (a stage re-run after
a crash) resumes the same way.

Each final adapter is gathered from the ZeRO-3 partitions on every worker (GatheredParameters) and
saved by rank 0 in PEFT format.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from prime_ray.paths import configure_environment
from prime_ray.spec import ModelSpec, TrainSpec
from prime_ray.training.artifacts import Student, adapter_dir, append_metrics, rewind_metrics
from prime_ray.training.collate import StepPlan, TrainSequence

STATE_FILE = "prime_ray_state.json"
ADAPTERS_SUBDIR = "adapters"
RUN_NAME = "students"


@dataclass(frozen=True)
class StudentRun:
    """One student to train: its name, λ, and its sequences."""

    name: Student
    think_weight: float
    sequences: Sequence[TrainSequence]


@dataclass(frozen=True)
class TrainedStudent:
    student: Student
    adapter_dir: Path
    steps: int


def step_plan(sequences: Sequence[TrainSequence], train: TrainSpec, *, world_size: int, max_steps: int | None) -> StepPlan:
    """The step plan every worker (and the driver, to count steps) builds from the same inputs."""
    return StepPlan(
        sequences,
        micro_batch_size=train.micro_batch_size,
        grad_accum=train.grad_accum,
        world_size=world_size,
        packing=train.packing,
        max_length=train.max_length,
        seed=train.seed,
        epochs=train.epochs,
        max_steps=max_steps,
    )


def train_students(
    students: Sequence[StudentRun],
    *,
    model: ModelSpec,
    train: TrainSpec,
    total_steps: int,
    pad_id: int,
    train_dir: Path,
    metrics_path: Path,
    progress: Any = None,  # a pipeline StageProgress (picklable): update(done, total, **metrics), info(msg)
    crash_once_marker: str | None = None,
) -> list[TrainedStudent]:
    """Train each student for `total_steps` optimizer steps (the same budget); adapters land in
    `adapter_dir(train_dir, name)`, Ray's run storage in `train_dir/checkpoints/`.

    `crash_once_marker` is fault injection for the recovery test: the last worker kills its own process
    right after the last student's first checkpoint is registered, once (the marker file records it).
    """
    names = [s.name for s in students]
    if len(set(names)) != len(names):
        raise ValueError(f"student names must be unique, got {names}")
    loop_config = {
        "students": [(s.name, s.think_weight, ray.put(list(s.sequences))) for s in students],
        "model": model,
        "train": train,
        "pad_id": pad_id,
        "total_steps": total_steps,
        "metrics_path": str(metrics_path),
        "progress": progress,
        "crash_once_marker": crash_once_marker,
    }
    env = configure_environment()
    if not train.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # a CPU run on a GPU node must not pick the CUDA accelerator
    resources = {"CPU": train.num_cpus_per_worker}
    if train.use_gpu:
        resources["GPU"] = 1
    _say_if_waiting(resources, train.num_workers, progress)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str(Path(train_dir).resolve() / "checkpoints"),
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env},
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    state = _read_state(result.checkpoint)
    if state["student"] != len(students):
        raise RuntimeError(f"training ended before every student was done (state {state})")
    trained = []
    with result.checkpoint.as_directory() as directory:
        for name in names:
            target = adapter_dir(train_dir, name)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(Path(directory) / ADAPTERS_SUBDIR / name, target)
            trained.append(TrainedStudent(student=name, adapter_dir=target, steps=total_steps))
    return trained


def _say_if_waiting(resources: dict[str, float], workers: int, progress: Any) -> None:
    """Ray Train waits for its workers' resources: say so when they are not free now (e.g. CPUs still
    held by a Serve replica), so a run that waits is not mistaken for one that hangs."""
    free = ray.available_resources()
    short = {k: v * workers for k, v in resources.items() if free.get(k, 0.0) < v * workers}
    if short and progress is not None:
        wanted = ", ".join(f"{v:g} {k}" for k, v in short.items())
        have = ", ".join(f"{free.get(k, 0.0):g} {k}" for k in short)
        progress.info(f"training needs {wanted} for {workers} worker(s), {have} free now: waiting for them")


# ---------------------------------------------------------------------------------- the worker


def _train_loop(config: dict[str, Any]) -> None:
    train: TrainSpec = config["train"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if not train.use_gpu:
        import torch

        torch.set_num_threads(max(1, int(train.num_cpus_per_worker)))

    restored = ray.train.get_checkpoint()
    state = _read_state(restored) if restored is not None else {"student": 0, "step": 0}
    # Rank 0 keeps the finished students' adapters and puts them in every checkpoint it reports.
    with tempfile.TemporaryDirectory(prefix="prime-ray-adapters-") as finished:
        if restored is not None and rank == 0:
            with restored.as_directory() as directory:
                shutil.copytree(Path(directory) / ADAPTERS_SUBDIR, finished, dirs_exist_ok=True)
        for index in range(state["student"], len(config["students"])):
            resume = restored if index == state["student"] and state["step"] > 0 else None
            _train_one(config, index, rank, world, Path(finished), resume, state if resume else None)
            gc.collect()  # the finished student's engine and model


def _train_one(config, index: int, rank: int, world: int, finished: Path, restored, state) -> None:
    """Train student `index` from scratch, or from `restored` at `state["step"]`; report its adapter."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from prime_ray.models.loading import load_model
    from prime_ray.training.collate import collate_rows
    from prime_ray.training.deepspeed_config import deepspeed_config, start_schedule
    from prime_ray.training.lora import attach_lora
    from prime_ray.training.step import TermMeter, forward_terms

    train: TrainSpec = config["train"]
    student, think_weight, sequences_ref = config["students"][index]
    total_steps: int = config["total_steps"]
    progress = config["progress"]
    progress_offset, progress_total = index * total_steps, len(config["students"]) * total_steps
    metrics_path = Path(config["metrics_path"])
    sequences: list[TrainSequence] = ray.get(sequences_ref)
    plan = step_plan(sequences, train, world_size=world, max_steps=total_steps)

    # Same seed on every worker: identical LoRA initialization (ZeRO-3 partitions, it does not broadcast).
    torch.manual_seed(train.seed)
    model, _ = load_model(config["model"], device="cpu", dtype="float32")  # DeepSpeed casts for bf16
    model = attach_lora(model, train.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(train, total_steps=total_steps, bf16=train.use_gpu)
    )
    start_schedule(scheduler)
    local_fraction = _local_parameter_fraction(engine.module)

    start = 0
    if restored is not None:
        with restored.as_directory() as directory:
            engine.load_checkpoint(directory, tag=state["tag"], load_module_strict=False)
        start = state["step"]
        if rank == 0:
            rewind_metrics(metrics_path, student, start)
            if progress is not None:
                progress.info(f"{student} student resumes at step {start} of {total_steps}", student=student, step=start)

    window, window_seconds = TermMeter(), 0.0  # seconds spent in training steps (not logging, checkpoints)
    for step in range(start, total_steps):
        step_started = time.perf_counter()
        step_lr = float(engine.get_lr()[0])  # the rate this step uses (the scheduler moves at its end)
        engine.train()
        for rows in plan.micro_batches(step, rank):
            batch = collate_rows(sequences, rows, pad_id=config["pad_id"], packed=train.packing).to(engine.device)
            terms = forward_terms(engine, batch, think_weight)
            engine.backward(terms.total)
            engine.step()
            window.add(terms, batch)
        window_seconds += time.perf_counter() - step_started
        done = step + 1
        if done % train.log_every_steps == 0 or done == total_steps:
            totals = window.as_tensor()
            dist.all_reduce(totals)
            window = TermMeter.from_tensor(totals)
            grad_norm = engine.get_global_grad_norm()
            record = {
                "student": student,
                "step": done,
                "epoch": plan.epoch_of(step),
                "loss": window.loss(think_weight),
                # A term without tokens in the window has no value (not 0): e.g. the fast student's think.
                "direct": window.direct if window.direct_tokens else None,
                "think": window.think if window.think_tokens else None,
                "think_weight": think_weight,
                "lr": step_lr,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens_per_s": window.tokens / window_seconds,
                "direct_tokens": window.direct_tokens,
                "think_tokens": window.think_tokens,
                "params_local_fraction": local_fraction,
                "workers": world,
            }
            if rank == 0:
                append_metrics(metrics_path, record)
                if progress is not None:
                    progress.update(progress_offset + done, progress_total, **record)
            window, window_seconds = TermMeter(), 0.0
        if done % train.checkpoint_every_steps == 0 and done < total_steps:
            tag = f"{student}-step-{done}"
            _report(rank, {"student": index, "step": done, "tag": tag}, finished,
                    f"checkpoint_{student}_step_{done:06d}", engine=engine)
            marker = config.get("crash_once_marker")
            if marker and index == len(config["students"]) - 1 and not os.path.exists(marker):
                _crash_once(marker, rank, world, f"checkpoint_{student}_step_{done:06d}")

    _gather_adapter(engine, rank, train.zero_stage, finished / student)
    _report(rank, {"student": index + 1, "step": 0}, finished, f"checkpoint_{student}_done")


def _report(rank: int, state: dict[str, Any], finished: Path, name: str, engine=None) -> None:
    """Report a checkpoint: every worker's DeepSpeed shard (with `engine`, under `state["tag"]`), and
    from rank 0 the state and the finished students' adapters. Ray merges the workers' folders."""
    with tempfile.TemporaryDirectory(prefix="prime-ray-ckpt-") as directory:
        if engine is not None:
            engine.save_checkpoint(directory, tag=state["tag"], exclude_frozen_parameters=True)
        if rank == 0:
            (Path(directory) / STATE_FILE).write_text(json.dumps(state))
            shutil.copytree(finished, Path(directory) / ADAPTERS_SUBDIR)
        has_files = any(Path(directory).iterdir())
        checkpoint = Checkpoint.from_directory(directory) if has_files else None
        ray.train.report({"student_index": state["student"], "step": state["step"]}, checkpoint=checkpoint,
                         checkpoint_dir_name=name)


def _gather_adapter(engine, rank: int, zero_stage: int, target: Path) -> None:
    """Gather the LoRA weights (all ranks, needed under ZeRO-3) and save them in PEFT format on rank 0."""
    import deepspeed

    model = engine.module
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None, enabled=zero_stage == 3):
        if rank == 0:
            state = {name: p.detach().to("cpu", copy=True) for name, p in named}
            model.save_pretrained(target, state_dict=state)


def _read_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """What a checkpoint of this loop holds: {"student": index of the student in training (or the
    count when all are done), "step": its last step, "tag": the DeepSpeed tag when step > 0}."""
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / STATE_FILE).read_text())


def _crash_once(marker: str, rank: int, world: int, checkpoint_dir_name: str) -> None:
    """Fault injection: the last worker kills its own process, once, after the checkpoint is registered.

    Ray registers a reported checkpoint when its controller has collected every worker's report, and
    then records it in the run's checkpoint snapshot; waiting for that record makes the recovery
    deterministic (a worker that dies earlier loses the checkpoint, and the run restarts from zero).
    """
    if rank != world - 1:
        return
    storage = ray.train.get_context().get_storage()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with storage.storage_filesystem.open_input_stream(storage.checkpoint_manager_snapshot_path) as f:
                if checkpoint_dir_name.encode() in f.read():
                    break
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    else:
        raise TimeoutError(f"checkpoint {checkpoint_dir_name} was not registered within 120 s")
    Path(marker).write_text(checkpoint_dir_name)
    os.kill(os.getpid(), signal.SIGKILL)


def _local_parameter_fraction(module) -> float:
    """Share of the model's parameter elements held by this worker (1.0 unless ZeRO-3 partitions them)."""
    full = local = 0
    for p in module.parameters():
        if hasattr(p, "ds_numel"):
            full += p.ds_numel
            local += p.ds_tensor.numel()
        else:
            full += p.numel()
            local += p.numel()
    return local / max(full, 1)
