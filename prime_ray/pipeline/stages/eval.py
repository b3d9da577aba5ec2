"""The `eval` stage: every mode of `spec.eval.modes` on the held-out data, then the report.

    generalist  G (the base model)       direct · personal-direct · think · personal-think
    fast        G + adapter train/fast   direct · personal-direct · think   (only when the λ = 0 student was trained)
    prime       G + adapter train/prime  direct · personal-direct · personal-think

Think modes generate from inside the think block (`generation_prefix`), so every answer has a trace.
Beside the modes, the non-LLM references (prime_ray.evaluation.references) answer the same examples;
the report pairs the modes per example and gives each claim of the method a verdict.

Per model, one Serve app runs G (with the student's adapter) and Ray Data sends each user's prompts
to it; the app is stopped before the next model starts, so only one model holds the CPUs/GPUs at a
time. Decoding is greedy by default (`eval.temperature`), so a mode's answers are reproducible.
Each split (`test_query`: held-out queries of training users; `test_user`: held-out users) is scored
per mode: task metrics and thinking health with bootstrap intervals (prime_ray.evaluation).

Outputs: report.json/.md/.png, samples.jsonl, and predictions.jsonl (every answer of every mode).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from prime_ray.data.schema import Example
from prime_ray.data.store import read_examples, read_user_roles, read_users
from prime_ray.engine.base import SamplingParams
from prime_ray.evaluation.metrics import Outcome, candidate_ranking, gold_rank
from prime_ray.evaluation.report import REPORT_FILES, ModeResult, Report, reference_results, summarize_mode, write_report
from prime_ray.memory.store import MEMORY_FILE, ExampleMemory, read_memory
from prime_ray.models.loading import load_tokenizer
from prime_ray.models.parser import parse_output
from prime_ray.models.prompts import (
    ANSWER_PREFIX, THINK_CLOSE, THINK_MODES, THINK_OPEN, completion_text, generation_prefix, render_prompt,
)
from prime_ray.pipeline.stage import Stage, StageContext, StageResult, register_stage
from prime_ray.spec import EvalMode, JobSpec, PromptMode, TaskSpec, config_hash
from prime_ray.tasks import task_kind
from prime_ray.traces.stats import gains_of_file
from prime_ray.traces.store import TRACES_FILE
from prime_ray.training.artifacts import adapter_dir

PREDICTIONS_FILE = "predictions.jsonl"

# Each mode is a model (None: the generalist; else the student whose adapter it loads) and a prompt mode.
MODES: dict[EvalMode, tuple[str | None, PromptMode]] = {
    EvalMode.generalist_direct: (None, PromptMode.direct),
    EvalMode.generalist_personal_direct: (None, PromptMode.personal_direct),
    EvalMode.generalist_think: (None, PromptMode.think),
    EvalMode.generalist_personal_think: (None, PromptMode.personal_think),
    EvalMode.fast_direct: ("fast", PromptMode.direct),
    EvalMode.fast_personal_direct: ("fast", PromptMode.personal_direct),
    EvalMode.fast_think: ("fast", PromptMode.think),
    EvalMode.prime_direct: ("prime", PromptMode.direct),
    EvalMode.prime_personal_direct: ("prime", PromptMode.personal_direct),
    EvalMode.prime_personal_think: ("prime", PromptMode.personal_think),
}


@dataclass(frozen=True)
class _Generated:
    example_id: str
    text: str
    completion_tokens: int
    finish_reason: str
    scores: list[float] | None  # ranking: log-likelihood of answering each candidate after the trace


class _AnswerUser:
    """A Ray Data worker's function: one user's prompts through the Serve app, and candidate scores.

    For ranking tasks the answer is parsed here, so the candidates can be scored as continuations of
    the model's own reasoning (`completion_text(candidate, trace)`): the trace is the same for every
    candidate, so the scores rank the answers given that reasoning.
    """

    def __init__(self, generalist, params: dict[str, Any], task: TaskSpec):
        self.generalist = generalist
        self.params = SamplingParams(**params)
        self.task = task

    def __call__(self, rows: list[dict]) -> list[dict]:
        # Think modes start inside the think block: the prefix is generated from, and read with the text.
        generations = self.generalist.generate([r["prompt"] + r.get("prefix", "") for r in rows], self.params)
        out = []
        for row, gen in zip(rows, generations):
            scores = None
            text = row.get("prefix", "") + gen.text
            if self.task.kind == "ranking" and row.get("candidates"):
                parsed = parse_output(text, self.task, row["candidates"])
                if parsed.ok:
                    scores = self.generalist.score(
                        [row["prompt"]] * len(row["candidates"]),
                        [completion_text(c, parsed.trace) for c in row["candidates"]],
                    )
            out.append({"example_id": row["example_id"], "text": text,
                        "completion_tokens": gen.completion_tokens, "finish_reason": gen.finish_reason,
                        "scores": scores})
        return out


def _select(examples: list[Example], splits: Sequence[str], max_examples: int | None, seed: int) -> dict[str, list[Example]]:
    """Per split, its examples (at most `max_examples`, chosen by seed), in example-id order."""
    chosen = {}
    for split in splits:
        pool = sorted((e for e in examples if e.split == split), key=lambda e: e.example_id)
        if max_examples is not None and len(pool) > max_examples:
            pool = sorted(random.Random(f"{seed}/{split}").sample(pool, max_examples), key=lambda e: e.example_id)
        chosen[split] = pool
    return chosen


def _outcome(example: Example, prompt_mode: PromptMode, gen: _Generated, task: TaskSpec) -> tuple[Outcome, Any]:
    parsed = parse_output(gen.text, task, example.candidates)
    # Asked to think, whatever the model wrote before its answer line is its thinking: an output that
    # never opens a think block (or loops until the token limit) is measured as it is, and one that
    # answers at once thought nothing ("" : 0 words), which the health metrics must show, not drop.
    trace = parsed.trace
    if prompt_mode in THINK_MODES and not trace:
        marker = gen.text.lower().find(ANSWER_PREFIX.lower())
        before = gen.text if marker < 0 else gen.text[:marker]
        # with a think tag, the parser's (empty) trace stands: the block was closed at once
        trace = "" if THINK_OPEN in before or THINK_CLOSE in before else before.strip()
    rank = None
    if task.kind == "ranking" and gen.scores is not None:
        rank = gold_rank(candidate_ranking(parsed.answer, example.candidates or [], gen.scores), example.output)
    return Outcome(example.example_id, example.output, parsed.answer, trace=trace, gold_rank=rank,
                   strict=parsed.strict), parsed


def plan_modes(spec: JobSpec, adapters: dict[str, Path]) -> tuple[list[EvalMode], dict[str, str]]:
    """The modes to run (in spec order) and, for the others, why not: a student without an adapter."""
    modes, skipped = [], {}
    for mode in spec.eval.modes:
        student = MODES[mode][0]
        if student is None or adapters[student].is_dir():
            modes.append(mode)
        elif student == "fast" and not spec.train.fast_thinking_baseline:
            skipped[mode.value] = "no fast-thinking student was trained (train.fast_thinking_baseline is false)"
        else:
            skipped[mode.value] = f"no {student} adapter at {adapters[student]}"
    return modes, skipped


@register_stage
class EvalStage(Stage):
    name = "eval"
    requires = ("ingest", "memory", "traces", "train")
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
        from prime_ray.distributed.serve import app_name, generalist  # Ray only where a stage runs

        spec, task = ctx.spec, ctx.spec.data.task
        examples = read_examples(ctx.inputs["ingest"] / "examples.parquet")
        by_split = _select(examples, spec.eval.splits, spec.eval.max_examples, spec.seed)
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
        with (ctx.out_dir / PREDICTIONS_FILE).open("w") as predictions:
            for student in dict.fromkeys(MODES[m][0] for m in modes):  # each model once, in mode order
                app = app_name(spec.name, f"eval-{student or 'base'}")
                with generalist(spec, app_name=app, adapter_path=str(adapters[student]) if student else None):
                    for mode in (m for m in modes if MODES[m][0] == student):
                        generated = self._generate(ctx, app, mode, evaluated, memory, tokenizer, progress)
                        for split in spec.eval.splits:
                            records = [_record(mode, split, e, generated[e.example_id], task) for e in by_split[split]]
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
    def _generate(ctx: StageContext, app: str, mode: EvalMode, examples: list[Example],
                  memory: dict[str, ExampleMemory], tokenizer, progress: "_Progress") -> dict[str, _Generated]:
        """Every example's output in `mode`, through Ray Data workers calling the Serve app `app`.

        Finished users are kept under parts/<mode>/, so a re-run after a crash redoes only the rest.
        """
        from prime_ray.distributed.batch import map_user_shards

        spec = ctx.spec
        rows = [_prompt_row(tokenizer, spec, e, MODES[mode][1], memory) for e in examples]
        params = {"max_new_tokens": spec.eval.max_new_tokens, "temperature": spec.eval.temperature, "seed": spec.seed}
        out = map_user_shards(
            rows, _AnswerUser, {"params": params, "task": spec.data.task},
            concurrency=spec.generalist.max_concurrency, app_name=app,
            parts_dir=ctx.out_dir / "parts" / mode.value,
            on_shard_done=lambda user_id, result, *_: progress.advance(len(result), mode.value),
        )
        return {g["example_id"]: _Generated(**g) for g in out}


class _Progress:
    """Examples generated over all modes, as progress events."""

    def __init__(self, ctx: StageContext, total: int):
        self.ctx, self.total, self.done = ctx, total, 0
        ctx.progress.update(0, total)

    def advance(self, n: int, mode: str) -> None:
        self.done += n
        self.ctx.progress.update(self.done, self.total, mode=mode)


def _prompt_row(tokenizer, spec: JobSpec, example: Example, mode: PromptMode, memory: dict[str, ExampleMemory]) -> dict:
    mem = memory.get(example.example_id)
    if mem is None:
        raise KeyError(f"example {example.example_id} has no row in memory/{MEMORY_FILE}")
    prompt = render_prompt(
        tokenizer, mode, task=spec.data.task, templates=spec.data.prompts, query_input=example.input,
        candidates=example.candidates, profile=mem.profile, episodes=mem.episodes,
    )
    return {"user_id": example.user_id, "example_id": example.example_id, "prompt": prompt,
            "prefix": generation_prefix(mode), "candidates": example.candidates}


def _record(mode: EvalMode, split: str, example: Example, gen: _Generated, task: TaskSpec) -> tuple[dict, Outcome]:
    """One line of predictions.jsonl, and the outcome the metrics read."""
    outcome, parsed = _outcome(example, MODES[mode][1], gen, task)
    record = {
        "mode": mode.value, "split": split, "example_id": example.example_id, "user_id": example.user_id,
        "input": example.input, "gold": example.output, "predicted": parsed.answer, "parse_error": parsed.reason,
        "strict": parsed.strict,
        "trace": outcome.trace, "text": gen.text, "completion_tokens": gen.completion_tokens,
        "finish_reason": gen.finish_reason, "gold_rank": outcome.gold_rank,
    }
    return record, outcome


def _summary_line(result: ModeResult, task: TaskSpec) -> str:
    name = task_kind(task).primary_metric
    metric = result.metrics[name]
    value = "–" if metric.value is None else f"{metric.value:.3f}"
    interval = f" [{metric.low:.3f}, {metric.high:.3f}]" if metric.low is not None else ""
    repetition = result.health["repetition"].value
    return (f"{result.mode} on {result.split}: {name} {value}{interval}, parse rate "
            f"{result.health['parse_rate'].value:.2f}"
            + (f", repetition {repetition:.3f}" if repetition is not None else ""))
