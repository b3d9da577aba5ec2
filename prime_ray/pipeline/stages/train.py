"""The `train` stage: the PRIME student, and optionally the fast-thinking baseline, on Ray Train.

Reads ingest's training examples, their memory and the kept traces; tokenizes them into direct and
think sequences (training/sequences.py) and trains the student with λ = spec.train.lambda into
`train/prime/`. With `train.fast_thinking_baseline`, the λ = 0 student is trained into `train/fast/`
by the same code, in the same Ray Train run, for the same number of optimizer steps (on the direct
sequences alone: with λ = 0 the think sequences add nothing to the loss). Both write
`train/metrics.jsonl`; `train/curves.png` plots them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prime_ray.pipeline.stage import Stage, StageContext, StageResult, register_stage
from prime_ray.spec import JobSpec, PromptMode, derive_seed

if TYPE_CHECKING:
    from prime_ray.training.artifacts import Student


@register_stage
class TrainStage(Stage):
    name = "train"
    requires = ("ingest", "memory", "traces")
    needs_ray = True
    outputs = ("prime/adapter", "curves.png", "metrics.jsonl")

    def outputs_for(self, spec: JobSpec) -> tuple[str, ...]:
        """The adapter of each student trained, and its merged model when `train.merge_adapter`."""
        outputs = []
        for name, _ in _students(spec):
            outputs.append(f"{name}/adapter")
            if spec.train.merge_adapter:
                outputs.append(f"{name}/merged")
        return (*outputs, "curves.png", "metrics.jsonl")

    def config(self, spec: JobSpec):
        dump = spec.model_dump(mode="json", by_alias=True)
        return {
            "model": dump["model"],
            "train": dump["train"],
            "task": dump["data"]["task"],
            "prompts": dump["data"]["prompts"],
            "memory": dump["memory"],
            "seed": spec.seed,
        }

    def run(self, ctx: StageContext) -> StageResult:
        from prime_ray.data.store import read_examples
        from prime_ray.distributed.train import StudentRun, train_students
        from prime_ray.memory.store import MEMORY_FILE, read_memory
        from prime_ray.models.loading import load_tokenizer
        from prime_ray.traces.store import TRACES_FILE, read_kept_traces
        from prime_ray.training.artifacts import (
            CURVES_FILE,
            METRICS_FILE,
            adapter_dir,
            merged_dir,
            read_metrics,
        )
        from prime_ray.training.curves import plot_curves
        from prime_ray.training.lora import merge_adapter
        from prime_ray.training.plan import step_plan
        from prime_ray.training.sequences import SequenceBuilder

        spec = ctx.spec
        # The job seed and the train seed together decide the data order and the LoRA initialization.
        train = spec.train.model_copy(update={"seed": derive_seed(spec.seed, "train", spec.train.seed)})
        examples = read_examples(ctx.inputs["ingest"] / "examples.parquet", split="train")
        if not examples:
            raise ValueError(f"{ctx.inputs['ingest'] / 'examples.parquet'} holds no training examples")
        memory = read_memory(ctx.inputs["memory"] / MEMORY_FILE)
        traces = read_kept_traces(ctx.inputs["traces"] / TRACES_FILE)
        tokenizer = load_tokenizer(spec.model)
        builder = SequenceBuilder(tokenizer, task=spec.data.task, templates=spec.data.prompts, max_length=train.max_length,
                                  answer_prompt=PromptMode(spec.train.answer_prompt))

        think_weight = spec.train.think_weight
        students = _students(spec)
        collations = {
            name: builder.build(examples, memory, traces, include_think=weight > 0) for name, weight in students
        }
        prime = collations["prime"]
        if think_weight > 0 and not prime.counts["think_sequences"]:
            ctx.progress.info("no kept trace fits: the PRIME student learns the direct term only")
        # Same budget for both students: the optimizer steps of the PRIME student's plan.
        total_steps = step_plan(prime.sequences, train, world_size=train.num_workers, max_steps=train.max_steps).total_steps

        metrics_path = ctx.out_dir / METRICS_FILE
        metrics_path.touch()
        started = time.perf_counter()
        train_students(
            [StudentRun(name, weight, collations[name].sequences) for name, weight in students],
            model=spec.model,
            train=train,
            total_steps=total_steps,
            pad_id=tokenizer.pad_token_id,
            train_dir=ctx.out_dir,
            metrics_path=metrics_path,
            progress=ctx.progress,
        )
        seconds_training = round(time.perf_counter() - started, 2)
        result_metrics: dict = {"think_weight": think_weight}
        for name, _ in students:
            if spec.train.merge_adapter:
                merge_adapter(spec.model, adapter_dir(ctx.out_dir, name), merged_dir(ctx.out_dir, name))
            records = read_metrics(metrics_path, name)
            for key in ("loss", "direct", "think", "tokens_per_s"):
                # the last value logged (a window without think sequences logs none)
                last = next((r[key] for r in reversed(records) if r.get(key) is not None), None)
                result_metrics[f"{name}_{key}"] = None if last is None else round(last, 4)
        result_metrics["seconds_training"] = seconds_training
        plot_curves(read_metrics(metrics_path), ctx.out_dir / CURVES_FILE)

        counts = {key: int(value) for key, value in prime.counts.items()}
        counts["steps"] = total_steps
        counts["kept_trace_examples"] = sum(1 for ex in examples if traces.get(ex.example_id))
        return StageResult(counts=counts, metrics=result_metrics)


def _students(spec: JobSpec) -> list[tuple[Student, float]]:
    """(name, λ) of each student: PRIME, and the λ = 0 one with `train.fast_thinking_baseline`."""
    students: list[tuple[Student, float]] = [("prime", spec.train.think_weight)]
    if spec.train.fast_thinking_baseline:
        students.append(("fast", 0.0))
    return students
