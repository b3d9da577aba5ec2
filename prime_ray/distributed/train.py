"""Ray Train wiring: students trained by one TorchTrainer, each by a `TrainEngine` (DeepSpeed ZeRO, PEFT LoRA).

    train_students(...)  driver side: puts each student's sequences in the object store, runs one
                         TorchTrainer for all of them (one worker start-up), copies the adapters
                         out of the last checkpoint into train/<student>/adapter/.
    _train_loop(config)  per worker, student after student: `create_train_engine`, then
                         `run_steps` over the worker's share of the step plan, with hooks that log
                         metrics (rank 0) and report checkpoints to Ray; then the gathered adapter.

Everything that is not Ray (model, LoRA, optimizer, DeepSpeed, the loss, the steps, checkpoints, the
ZeRO-3 gather) lives in `prime_ray.training`.

Fault tolerance: every `checkpoint_every_steps` each worker writes its engine checkpoint and reports it
with `ray.train.report`; Ray merges the shards into one checkpoint, which also carries the adapters of
the students already finished. When a worker dies, Ray restarts the group (up to `max_failures` times)
and the loop resumes from `ray.train.get_checkpoint()`: finished students are skipped, the current one
continues from its checkpoint. The step plan is a pure function of the step, so a resumed run does
exactly the steps an uninterrupted one would. A new `fit` with the same storage folder (a stage re-run
after a crash) resumes the same way.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from prime_ray.paths import configure_environment
from prime_ray.spec import ModelSpec, TrainSpec
from prime_ray.training.artifacts import Student, adapter_dir, append_metrics, rewind_metrics
from prime_ray.training.engine import Progress
from prime_ray.training.sequences import TrainSequence

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


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint every worker has just reported (what a fault-injection hook is told)."""

    student: Student
    student_index: int  # position of the student in the run
    students: int  # students in the run
    step: int  # optimizer steps done
    rank: int
    world_size: int
    checkpoint_dir_name: str  # the name Ray stores the checkpoint under


@dataclass(frozen=True)
class _StudentRef:
    name: Student
    think_weight: float
    sequences: ray.ObjectRef  # list[TrainSequence] in the object store


@dataclass(frozen=True)
class _LoopConfig:
    """What every worker's loop gets (picklable)."""

    students: tuple[_StudentRef, ...]
    model: ModelSpec
    train: TrainSpec
    pad_id: int
    total_steps: int
    metrics_path: str
    progress: Progress | None
    after_checkpoint: Callable[[CheckpointEvent], None] | None


def train_students(
    students: Sequence[StudentRun],
    *,
    model: ModelSpec,
    train: TrainSpec,
    total_steps: int,
    pad_id: int,
    train_dir: Path,
    metrics_path: Path,
    progress: Progress | None = None,
    after_checkpoint: Callable[[CheckpointEvent], None] | None = None,
) -> list[TrainedStudent]:
    """Train each student for `total_steps` optimizer steps (the same budget); adapters land in
    `adapter_dir(train_dir, name)`, Ray's run storage in `train_dir/checkpoints/`.

    `after_checkpoint` (picklable) runs on every worker after each reported checkpoint: tests pass one
    that kills a worker to exercise recovery. Raises ValueError for duplicate student names and
    whatever the training run raised.
    """
    names = [s.name for s in students]
    if len(set(names)) != len(names):
        raise ValueError(f"student names must be unique, got {names}")
    loop_config = _LoopConfig(
        students=tuple(_StudentRef(s.name, s.think_weight, ray.put(list(s.sequences))) for s in students),
        model=model,
        train=train,
        pad_id=pad_id,
        total_steps=total_steps,
        metrics_path=str(metrics_path),
        progress=progress,
        after_checkpoint=after_checkpoint,
    )
    env = configure_environment()
    if not train.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # a CPU run on a GPU node must not pick the CUDA accelerator
    resources = {"CPU": train.num_cpus_per_worker}
    if train.use_gpu:
        resources["GPU"] = 1
    _say_if_waiting(resources, train.num_workers, progress)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"loop": loop_config},
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(  # type: ignore[call-arg]  # ray.train exports the v2 RunConfig at run time, v1 statically
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


def _say_if_waiting(resources: dict[str, float], workers: int, progress: Progress | None) -> None:
    """Ray Train waits for its workers' resources: say so when they are not free now (e.g. CPUs still
    held by a Serve replica), so a run that waits is not mistaken for one that hangs."""
    free = ray.available_resources()
    short = {k: v * workers for k, v in resources.items() if free.get(k, 0.0) < v * workers}
    if short and progress is not None:
        wanted = ", ".join(f"{v:g} {k}" for k, v in short.items())
        have = ", ".join(f"{free.get(k, 0.0):g} {k}" for k in short)
        progress.info(f"training needs {wanted} for {workers} worker(s), {have} free now: waiting for them")


# ---------------------------------------------------------------------------------- the worker


def _train_loop(loop_config: dict[str, Any]) -> None:
    config: _LoopConfig = loop_config["loop"]
    if not config.train.use_gpu:
        import torch

        torch.set_num_threads(max(1, int(config.train.num_cpus_per_worker)))
    rank = ray.train.get_context().get_world_rank()
    restored = ray.train.get_checkpoint()
    state = _read_state(restored) if restored is not None else {"student": 0, "step": 0}
    # Rank 0 keeps the finished students' adapters and puts them in every checkpoint it reports.
    with tempfile.TemporaryDirectory(prefix="prime-ray-adapters-") as finished:
        if restored is not None and rank == 0:
            with restored.as_directory() as directory:
                shutil.copytree(Path(directory) / ADAPTERS_SUBDIR, finished, dirs_exist_ok=True)
        for index in range(state["student"], len(config.students)):
            resume = restored if index == state["student"] and state["step"] > 0 else None
            _train_one(config, index, Path(finished), resume, state if resume else None)
            gc.collect()  # the finished student's engine and model


def _train_one(config: _LoopConfig, index: int, finished: Path, restored: Checkpoint | None,
               state: dict[str, Any] | None) -> None:
    """Train student `index` from scratch, or from `restored` at `state["step"]`; report its adapter."""
    from prime_ray.training.engine import EngineConfig, create_train_engine
    from prime_ray.training.loop import run_steps
    from prime_ray.training.plan import step_plan

    student = config.students[index]
    total_steps, progress = config.total_steps, config.progress
    metrics_path = Path(config.metrics_path)
    sequences: list[TrainSequence] = ray.get(student.sequences)
    engine = create_train_engine(EngineConfig(model=config.model, train=config.train, total_steps=total_steps,
                                              think_weight=student.think_weight))
    rank, world = engine.rank, engine.world_size
    plan = step_plan(sequences, config.train, world_size=world, max_steps=total_steps)
    local_fraction = engine.local_parameter_fraction

    start = 0
    if restored is not None and state is not None:
        with restored.as_directory() as directory:
            engine.load_checkpoint(Path(directory), state["tag"])
        start = state["step"]
        if rank == 0:
            rewind_metrics(metrics_path, student.name, start)
            if progress is not None:
                progress.info(f"{student.name} student resumes at step {start} of {total_steps}",
                              student=student.name, step=start)

    def on_log(done: int, window: dict[str, Any]) -> None:
        if rank != 0:
            return
        record = {"student": student.name, "step": done, "think_weight": student.think_weight, **window,
                  "params_local_fraction": local_fraction, "workers": world}
        append_metrics(metrics_path, record)
        if progress is not None:
            progress.update(index * total_steps + done, len(config.students) * total_steps, **record)

    def on_checkpoint(done: int) -> None:
        name = f"checkpoint_{student.name}_step_{done:06d}"
        tag = f"{student.name}-step-{done}"
        _report(rank, {"student": index, "step": done, "tag": tag}, finished, name, engine=engine)
        if config.after_checkpoint is not None:
            config.after_checkpoint(CheckpointEvent(student.name, index, len(config.students), done, rank, world, name))

    run_steps(engine, plan, sequences, pad_id=config.pad_id, start_step=start,
              log_every=config.train.log_every_steps, checkpoint_every=config.train.checkpoint_every_steps,
              on_log=on_log, on_checkpoint=on_checkpoint)
    engine.export_adapter(finished / student.name)
    _report(rank, {"student": index + 1, "step": 0}, finished, f"checkpoint_{student.name}_done")


def _report(rank: int, state: dict[str, Any], finished: Path, name: str, engine=None) -> None:
    """Report a checkpoint: every worker's engine checkpoint (with `engine`, under `state["tag"]`), and
    from rank 0 the state and the finished students' adapters. Ray merges the workers' folders."""
    with tempfile.TemporaryDirectory(prefix="prime-ray-ckpt-") as directory:
        if engine is not None:
            engine.save_checkpoint(Path(directory), state["tag"])
        if rank == 0:
            (Path(directory) / STATE_FILE).write_text(json.dumps(state))
            shutil.copytree(finished, Path(directory) / ADAPTERS_SUBDIR)
        has_files = any(Path(directory).iterdir())
        checkpoint = Checkpoint.from_directory(directory) if has_files else None
        ray.train.report({"student_index": state["student"], "step": state["step"]}, checkpoint=checkpoint,
                         checkpoint_dir_name=name)


def _read_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """What a checkpoint of this loop holds: {"student": index of the student in training (or the
    count when all are done), "step": its last step, "tag": the engine checkpoint's tag when step > 0}."""
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / STATE_FILE).read_text())


def wait_until_registered(checkpoint_dir_name: str, timeout_s: float = 120.0) -> None:
    """Block until Ray has registered the reported checkpoint `checkpoint_dir_name` of this run.

    Ray registers a reported checkpoint when its controller has collected every worker's report, and
    then records it in the run's checkpoint snapshot. A worker that dies before that loses the
    checkpoint; fault-injection hooks wait here so a recovery test is deterministic. Call it from a
    Ray Train worker. Raises TimeoutError.
    """
    import time

    storage = ray.train.get_context().get_storage()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with storage.storage_filesystem.open_input_stream(storage.checkpoint_manager_snapshot_path) as f:
                if checkpoint_dir_name.encode() in f.read():
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"checkpoint {checkpoint_dir_name} was not registered within {timeout_s:g} s")
