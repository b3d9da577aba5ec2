"""The eval stage's compute (no Ray): which modes run, each user's answers, and how they are scored.

    MODES               mode -> (student whose adapter is loaded or None for G, prompt mode)
    plan_modes          the modes to run and, for the others, why not
    select_examples     per split, the examples evaluated (bounded, seeded)
    prompt_row          an example's rendered prompt as a worker row
    AnswerUser          a worker: one user's prompt rows -> generated rows (and candidate scores)
    answer_outcome      a generated row -> the Outcome the metrics read
    prediction_record   one line of predictions.jsonl, and its Outcome
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prime_ray.data.schema import Example
from prime_ray.engine.base import SamplingParams
from prime_ray.evaluation.metrics import Outcome, candidate_ranking, gold_rank
from prime_ray.memory.store import MEMORY_FILE, ExampleMemory
from prime_ray.models.parser import parse_output
from prime_ray.models.prompts import (
    ANSWER_PREFIX,
    THINK_CLOSE,
    THINK_MODES,
    THINK_OPEN,
    completion_text,
    generation_prefix,
    render_prompt,
)
from prime_ray.spec import EvalMode, JobSpec, PromptMode, TaskSpec, derive_seed

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
class Generated:
    example_id: str
    text: str
    completion_tokens: int
    finish_reason: str
    scores: list[float] | None  # ranking: log-likelihood of answering each candidate after the trace
    user_id: str = ""
    mode: str = ""  # the EvalMode value the prompt was rendered for


class AnswerConfig(BaseModel):
    """How AnswerUser decodes: the task (ranking scores candidates) and the eval's sampling params."""

    model_config = ConfigDict(frozen=True)

    task: TaskSpec = Field(description="The job's task.")
    max_new_tokens: int = Field(description="eval.max_new_tokens.")
    temperature: float = Field(0.0, description="eval.temperature (0: greedy).")
    seed: int | None = Field(None, description="The job's seed.")


class AnswerUser:
    """A worker (`distributed.batch.UserWorker`): users' prompt rows through the generalist, and candidate scores.

    For ranking tasks the answer is parsed here, so the candidates can be scored as continuations of
    the model's own reasoning (`completion_text(candidate, trace)`): the trace is the same for every
    candidate, so the scores rank the answers given that reasoning.
    """

    config_type = AnswerConfig
    required_keys = ("example_id", "prompt")

    def __init__(self, generalist, config: AnswerConfig):
        self.generalist = generalist
        self.params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                     seed=config.seed)
        self.task = config.task

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
            out.append({"user_id": row["user_id"], "mode": row.get("mode", ""),
                        "example_id": row["example_id"], "text": text,
                        "completion_tokens": gen.completion_tokens, "finish_reason": gen.finish_reason,
                        "scores": scores})
        return out

def select_examples(examples: list[Example], splits: Sequence[str], max_examples: int | None, seed: int) -> dict[str, list[Example]]:
    """Per split, its examples (at most `max_examples`, chosen by seed), in example-id order."""
    chosen = {}
    for split in splits:
        pool = sorted((e for e in examples if e.split == split), key=lambda e: e.example_id)
        if max_examples is not None and len(pool) > max_examples:
            pool = sorted(random.Random(derive_seed(seed, "eval", split)).sample(pool, max_examples), key=lambda e: e.example_id)
        chosen[split] = pool
    return chosen

def answer_outcome(example: Example, prompt_mode: PromptMode, gen: Generated, task: TaskSpec) -> tuple[Outcome, Any]:
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
        ranking = candidate_ranking(parsed.answer, example.candidates or [], gen.scores)
        # several right answers (e.g. several persuasive replies): the best-placed one counts
        rank = min((r for gold in (example.output, *(example.also_correct or ())) if (r := gold_rank(ranking, gold))),
                   default=None)
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

def prompt_row(tokenizer, spec: JobSpec, example: Example, mode: PromptMode, memory: dict[str, ExampleMemory]) -> dict:
    mem = memory.get(example.example_id)
    if mem is None:
        raise KeyError(f"example {example.example_id} has no row in memory/{MEMORY_FILE}")
    prompt = render_prompt(
        tokenizer, mode, task=spec.data.task, templates=spec.data.prompts, query_input=example.input,
        candidates=example.candidates, profile=mem.profile, episodes=mem.episodes,
    )
    return {"user_id": example.user_id, "example_id": example.example_id, "prompt": prompt,
            "prefix": generation_prefix(mode), "candidates": example.candidates}

def prediction_record(mode: EvalMode, split: str, example: Example, gen: Generated, task: TaskSpec) -> tuple[dict, Outcome]:
    """One line of predictions.jsonl, and the outcome the metrics read."""
    outcome, parsed = answer_outcome(example, MODES[mode][1], gen, task)
    record = {
        "mode": mode.value, "split": split, "example_id": example.example_id, "user_id": example.user_id,
        "input": example.input, "gold": example.output, "predicted": parsed.answer, "parse_error": parsed.reason,
        "strict": parsed.strict,
        "trace": outcome.trace, "text": gen.text, "completion_tokens": gen.completion_tokens,
        "finish_reason": gen.finish_reason, "gold_rank": outcome.gold_rank,
    }
    return record, outcome
