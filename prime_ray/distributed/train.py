"""Ray Train wiring: the student trained by a TorchTrainer, with DeepSpeed ZeRO and PEFT LoRA.

    train_student(...)  driver side: puts the sequences in the object store, runs the TorchTrainer,
                        copies the final adapter out of the last checkpoint.
    _train_loop(cfg)    per worker: same base weights everywhere, LoRA, deepspeed.initialize, the
                        worker's deterministic share of every step (StepPlan), metrics, checkpoints.

Fault tolerance: every `checkpoint_every_steps` each worker writes its DeepSpeed shard
(`engine.save_checkpoint`) and reports it with `ray.train.report`; Ray merges the shards into one
checkpoint. When a worker dies, Ray restarts the group (up to `max_failures` times) and the loop
resumes from `ray.train.get_checkpoint()` with `engine.load_checkpoint`: the step plan is a pure
function of the step, so the resumed run does exactly the steps an uninterrupted one would. A new
`fit` with the same storage folder (a stage re-run after a crash) resumes the same way.

The final adapter is gathered from the ZeRO-3 partitions on every worker (GatheredParameters) and
saved by rank 0 in PEFT format, as the run's last checkpoint.
"""

from __future__ import annotations

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
from prime_ray.training.artifacts import Student, append_metrics, rewind_metrics
from prime_ray.training.collate import StepPlan, TrainSequence

STATE_FILE = "prime_ray_state.json"
ADAPTER_SUBDIR = "adapter"


@dataclass(frozen=True)
class TrainedStudent:
    student: Student
    adapter_dir: Path
    steps: int
    metrics: dict[str, Any]  # the last report of the run (final loss terms, tokens/s, ...)


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


def train_student(
    *,
    student: Student,
    model: ModelSpec,
    train: TrainSpec,
    think_weight: float,
    sequences: Sequence[TrainSequence],
    pad_id: int,
    total_steps: int,
    out_dir: Path,
    adapter_dir: Path,
    metrics_path: Path,
    progress: Any = None,  # a pipeline StageProgress (picklable): update(done, total, **metrics), info(msg)
    progress_offset: int = 0,
    progress_total: int | None = None,
    crash_once_marker: str | None = None,
) -> TrainedStudent:
    """Train one student on `sequences` for `total_steps` optimizer steps; its adapter ends in `adapter_dir`.

    Progress events count steps from `progress_offset` out of `progress_total` (default: this run's
    steps), so several students trained by one stage make one progress bar.

    `crash_once_marker` is fault injection for the recovery test: the last worker kills its own process
    right after the first checkpoint, once (the marker file records that it happened).
    """
    loop_config = {
        "student": student,
        "model": model,
        "train": train,
        "think_weight": think_weight,
        "sequences": ray.put(list(sequences)),
        "pad_id": pad_id,
        "total_steps": total_steps,
        "metrics_path": str(metrics_path),
        "progress": progress,
        "progress_offset": progress_offset,
        "progress_total": progress_total or total_steps,
        "crash_once_marker": crash_once_marker,
    }
    env = configure_environment()
    if not train.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # a CPU run on a GPU node must not pick the CUDA accelerator
    resources = {"CPU": train.num_cpus_per_worker}
    if train.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=student,
            storage_path=str(Path(out_dir).resolve() / "checkpoints"),
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env},
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError(f"training the {student} student reported no checkpoint")
    with checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        if not state.get("final"):
            raise RuntimeError(f"training the {student} student ended without its final adapter (state {state})")
        shutil.rmtree(adapter_dir, ignore_errors=True)
        shutil.copytree(Path(directory) / ADAPTER_SUBDIR, adapter_dir)
    return TrainedStudent(student=student, adapter_dir=adapter_dir, steps=state["step"], metrics=dict(result.metrics or {}))


# ---------------------------------------------------------------------------------- the worker


def _train_loop(config: dict[str, Any]) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from prime_ray.models.loading import load_model
    from prime_ray.training.collate import collate_rows
    from prime_ray.training.deepspeed_config import deepspeed_config, start_schedule
    from prime_ray.training.lora import attach_lora
    from prime_ray.training.step import TermMeter, forward_terms

    train: TrainSpec = config["train"]
    student: Student = config["student"]
    think_weight: float = config["think_weight"]
    total_steps: int = config["total_steps"]
    progress = config["progress"]
    metrics_path = Path(config["metrics_path"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if not train.use_gpu:
        torch.set_num_threads(max(1, int(train.num_cpus_per_worker)))

    sequences: list[TrainSequence] = ray.get(config["sequences"])
    plan = step_plan(sequences, train, world_size=world, max_steps=total_steps)

    # Same seed on every worker: identical LoRA initialization (ZeRO-3 partitions, it does not broadcast).
    torch.manual_seed(train.seed)
    model, _ = load_model(config["model"], device="cpu", dtype="float32")  # DeepSpeed casts for bf16
    model = attach_lora(model, train.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
    use_bf16 = train.use_gpu
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(train, total_steps=total_steps, bf16=use_bf16)
    )
    start_schedule(scheduler)
    device = engine.device
    local_fraction = _local_parameter_fraction(engine.module)

    start = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state = json.loads((Path(directory) / STATE_FILE).read_text())
            if state.get("final"):
                return  # an earlier attempt finished: its last checkpoint holds the adapter
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
            batch = collate_rows(sequences, rows, pad_id=config["pad_id"], packed=train.packing).to(device)
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
                "direct": window.direct,
                "think": window.think,
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
                    progress.update(config["progress_offset"] + done, config["progress_total"], **record)
            window, window_seconds = TermMeter(), 0.0
        if done % train.checkpoint_every_steps == 0 and done < total_steps:
            _report_checkpoint(engine, rank, done, {"step": done, "params_local_fraction": local_fraction})
            marker = config.get("crash_once_marker")
            if marker and not os.path.exists(marker):
                _crash_once(marker, rank, world, done)

    _report_adapter(engine, rank, train.zero_stage, total_steps, {"step": total_steps, "final": True,
                                                                     "params_local_fraction": local_fraction})


def _report_checkpoint(engine, rank: int, step: int, metrics: dict[str, Any]) -> None:
    """Every worker saves its DeepSpeed shard; Ray merges the folders into one checkpoint."""
    tag = f"step-{step}"
    with tempfile.TemporaryDirectory(prefix="prime-ray-ckpt-") as directory:
        engine.save_checkpoint(directory, tag=tag, client_state={"step": step}, exclude_frozen_parameters=True)
        if rank == 0:
            (Path(directory) / STATE_FILE).write_text(json.dumps({"step": step, "tag": tag, "final": False}))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory),
                         checkpoint_dir_name=_checkpoint_dir_name(step))


def _report_adapter(engine, rank: int, zero_stage: int, step: int, metrics: dict[str, Any]) -> None:
    """Gather the LoRA weights (all ranks, needed under ZeRO-3) and save them in PEFT format on rank 0."""
    import deepspeed

    model = engine.module
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    with tempfile.TemporaryDirectory(prefix="prime-ray-adapter-") as directory:
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None, enabled=zero_stage == 3):
            if rank == 0:
                state = {name: p.detach().to("cpu", copy=True) for name, p in named}
                model.save_pretrained(Path(directory) / ADAPTER_SUBDIR, state_dict=state)
                (Path(directory) / STATE_FILE).write_text(json.dumps({"step": step, "final": True}))
        checkpoint = Checkpoint.from_directory(directory) if rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name="checkpoint_final_adapter")


def _crash_once(marker: str, rank: int, world: int, step: int) -> None:
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
                if _checkpoint_dir_name(step).encode() in f.read():
                    break
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    else:
        raise TimeoutError(f"the step-{step} checkpoint was not registered within 120 s")
    Path(marker).write_text(str(step))
    os.kill(os.getpid(), signal.SIGKILL)


def _checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_step_{step:06d}"


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
