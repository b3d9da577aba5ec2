"""The `eval` stage: every mode of `spec.eval.modes` on the held-out data, then the report.

    generalist  G (the base model)       direct · personal-direct · think · personal-think
    fast        G + adapter train/fast   direct · personal-direct · think   (only when the λ = 0 student was trained)
    prime       G + adapter train/prime  direct · personal-direct · personal-think

Think modes generate from inside the think block (`generation_prefix`), so every answer has a trace;
one that reaches no answer line of its own gets its answer forced after that trace (`eval.force_answer`).
Beside the modes, the non-LLM references (prime_ray.evaluation.references) answer the same examples;
the report pairs the modes per example and gives each claim of the method a verdict.

One Serve app runs G with the students' adapters (merged into the weights per engine batch), and Ray
Data workers send it every mode's prompts of several users at once (`GeneralistMap`), so the three
models' batches fill from the same users and no app is restarted between models. Decoding is greedy
by default (`eval.temperature`), so a mode's answers are reproducible.
Each split (`test_query`: held-out queries of training users; `test_user`: held-out users) is scored
per mode: task metrics and thinking health with bootstrap intervals (prime_ray.evaluation).

Outputs: report.json/.md/.png, samples.jsonl, and predictions.jsonl (every answer of every mode).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prime_ray.data.schema import Example
from prime_ray.data.store import read_examples, read_user_roles, read_users
from prime_ray.evaluation.answering import (
    MODES,
    AnswerConfig,
    AnswerUser,
    Generated,
    plan_modes,
    prediction_record,
    prompt_row,
    select_examples,
)
from prime_ray.evaluation.report import (
    REPORT_FILES,
    ModeResult,
    Report,
    reference_results,
    summarize_mode,
    write_report,
)
from prime_ray.memory.store import MEMORY_FILE, ExampleMemory, read_memory
from prime_ray.models.loading import load_tokenizer
from prime_ray.pipeline.stage import Stage, StageContext, StageResult, register_stage
from prime_ray.spec import EvalMode, JobSpec, TaskSpec, config_hash
from prime_ray.tasks import task_kind
from prime_ray.traces.stats import gains_of_file
from prime_ray.traces.store import TRACES_FILE
from prime_ray.training.artifacts import adapter_dir

PREDICTIONS_FILE = "predictions.jsonl"

@register_stage
class EvalStage(Stage):
    name = "eval"
    requires = ("ingest", "memory", "traces", "train")
    deploys_generalist = True
    outputs = (*REPORT_FILES, PREDICTIONS_FILE)

    def config(self, spec: JobSpec) -> Any:
        # The adapters and memory arrive through the input hash (the upstream manifests).
        return {
            "eval": spec.eval.model_dump(mode="json"),
            "model": spec.model.model_dump(mode="json"),
            "task": spec.data.task.model_dump(mode="json"),
            "prompts": spec.data.prompts.model_dump(mode="json"),
            "memory": spec.memory.model_dump(mode="json"),
            "seed": spec.seed,
        }

    def run(self, ctx: StageContext) -> StageResult:
        spec, task = ctx.spec, ctx.spec.data.task
        examples = read_examples(ctx.inputs["ingest"] / "examples.parquet")
        by_split = select_examples(examples, spec.eval.splits, spec.eval.max_examples, spec.seed)
        memory = read_memory(ctx.inputs["memory"] / MEMORY_FILE)
        tokenizer = load_tokenizer(spec.model)

        adapters = {student: adapter_dir(ctx.inputs["train"], student) for student in ("fast", "prime")}
        modes, skipped = plan_modes(spec, adapters)
        for mode, why in skipped.items():
            ctx.progress.info(f"{mode}: skipped, {why}")

        evaluated = [e for split in spec.eval.splits for e in by_split[split]]
        ctx.progress.info(
            f"{len(modes)} modes on " + ", ".join(f"{s}: {len(by_split[s])}" for s in spec.eval.splits) + " examples"
        )
        progress = _Progress(ctx, total=len(evaluated) * len(modes))
        results: list[ModeResult] = []
        samples: list[dict] = []
        students = {s: adapters[s] for m in modes if (s := MODES[m][0])}
        generated = self._generate(ctx, modes, evaluated, memory, tokenizer, progress, students)
        with (ctx.out_dir / PREDICTIONS_FILE).open("w") as predictions:
            for mode in modes:
                for split in spec.eval.splits:
                    records = [prediction_record(mode, split, e, generated[mode.value, e.example_id], task)
                               for e in by_split[split]]
                    for record, _ in records:
                        predictions.write(json.dumps(record, ensure_ascii=False) + "\n")
                    samples += [record for record, _ in records[: spec.eval.sample_traces_per_mode]]
                    result = summarize_mode(task, mode.value, split, [o for _, o in records],
                                            n_resamples=spec.eval.bootstrap_samples, seed=spec.seed)
                    results.append(result)
                    ctx.progress.info(_summary_line(result, task))
        shutil.rmtree(ctx.out_dir / "parts", ignore_errors=True)  # predictions.jsonl holds all of it now
        users_file = ctx.inputs["ingest"] / "users.parquet"
        results += reference_results(task, by_split, read_users(users_file), read_user_roles(users_file),
                                     n_resamples=spec.eval.bootstrap_samples, seed=spec.seed)

        report = Report(
            job=spec.name,
            spec_hash=config_hash(spec.model_dump(mode="json", by_alias=True)),
            model=spec.model.model_dump(mode="json"),
            data=spec.data.model_dump(mode="json", by_alias=True),
            task=task,
            results=results,
            skipped_modes=skipped,
            counts={f"{split}_examples": len(by_split[split]) for split in spec.eval.splits}
            | {"users": len({e.user_id for e in evaluated}), "modes": len(modes)},
            samples=samples,
            bootstrap_samples=spec.eval.bootstrap_samples,
            seed=spec.seed,
            trace_gains=gains_of_file(ctx.inputs["traces"] / TRACES_FILE),
        )
        write_report(ctx.out_dir, report)
        for claim in report.claims:
            ctx.progress.info(f"claim {claim.number} on {claim.split}: {claim.verdict}")
        primary = task_kind(task).primary_metric
        return StageResult(
            counts={"examples": len(evaluated), "modes": len(modes), "skipped_modes": len(skipped),
                    "parse_failures": sum(r.parse_failures for r in results)},
            metrics={f"{r.split}/{r.mode}/{primary}": r.metrics[primary].value for r in results},
        )

    @staticmethod
    def _generate(ctx: StageContext, modes: list[EvalMode], examples: list[Example],
                  memory: dict[str, ExampleMemory], tokenizer, progress: _Progress,
                  students: dict[str, Path]) -> dict[tuple[str, str], Generated]:
        """(mode, example_id) -> output, for every example in every mode: one Serve app (G and the
        `students`' adapters), and all the modes' prompts of a user in one worker call.

        Finished users are kept under parts/, so a re-run after a crash redoes only the rest.
        """
        from prime_ray.distributed.batch import GeneralistMap, UsersFailed
        from prime_ray.distributed.serve import app_name

        spec = ctx.spec
        rows = [prompt_row(tokenizer, spec, e, mode, memory) for e in examples for mode in modes]  # a user's rows stay together
        config = AnswerConfig(task=spec.data.task, max_new_tokens=spec.eval.max_new_tokens,
                              temperature=spec.eval.temperature, seed=spec.seed, force_answer=spec.eval.force_answer)
        with GeneralistMap(spec, app_name=app_name(spec.name, "eval"),
                           adapters={name: str(path) for name, path in students.items()}) as g:
            result = g.map_users(rows, AnswerUser, config, parts_dir=ctx.out_dir / "parts",
                                 on_user_done=lambda user_id, out, *_: progress.advance(len(out)))
        if result.failures:
            raise UsersFailed(result.failures)  # a report missing some users' answers would be biased
        if line := result.prefix_cache_line():
            ctx.progress.info(line)
        return {(r["mode"], r["example_id"]): Generated(**r) for r in result.rows}


class _Progress:
    """Examples generated over all modes, as progress events."""

    def __init__(self, ctx: StageContext, total: int):
        self.ctx, self.total, self.done = ctx, total, 0
        ctx.progress.update(0, total)

    def advance(self, n: int) -> None:
        self.done += n
        self.ctx.progress.update(self.done, self.total)


def _summary_line(result: ModeResult, task: TaskSpec) -> str:
    name = task_kind(task).primary_metric
    metric = result.metrics[name]
    value = "–" if metric.value is None else f"{metric.value:.3f}"
    interval = f" [{metric.low:.3f}, {metric.high:.3f}]" if metric.low is not None else ""
    repetition, forced = result.health["repetition"].value, result.health["forced"].value
    return (f"{result.mode} on {result.split}: {name} {value}{interval}, parse rate "
            f"{result.health['parse_rate'].value:.2f}"
            + (f" ({forced:.2f} forced)" if forced else "")
            + (f", repetition {repetition:.3f}" if repetition is not None else ""))
