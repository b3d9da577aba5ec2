"""The eval stage's compute (no Ray): which modes run, each user's answers, and how they are scored.

    MODES               mode -> (student whose adapter is loaded or None for G, prompt mode)
    plan_modes          the modes to run and, for the others, why not
    select_examples     per split, the examples evaluated (bounded, seeded)
    prompt_row          an example's rendered prompt as a worker row (and the adapter of its mode's model)
    AnswerUser          a worker: one user's prompt rows -> generated rows (and candidate scores)
    needs_forcing       whether a think-mode output gets its answer forced (budget forcing)
    own_thinking        the model's thinking in an output, as the forced answer continues it
    read_answer         a generated row's parsed answer (its forced answer, when it has one)
    answer_outcome      a generated row -> the Outcome the metrics read
    prediction_record   one line of predictions.jsonl, and its Outcome
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prime_ray.data.schema import Example
from prime_ray.engine.base import Generation, SamplingParams
from prime_ray.evaluation.metrics import Outcome, candidate_ranking, gold_rank
from prime_ray.memory.store import MEMORY_FILE, ExampleMemory
from prime_ray.models.parser import ParsedOutput, parse_output
from prime_ray.models.prompts import (
    ANSWER_PREFIX,
    THINK_CLOSE,
    THINK_MODES,
    THINK_OPEN,
    answer_prefix,
    completion_text,
    generation_prefix,
    render_prompt,
)
from prime_ray.spec import EvalMode, JobSpec, PromptMode, TaskSpec, derive_seed
from prime_ray.tasks import task_kind

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
    forced: bool = False  # the answer was forced after the thinking (`text` is the model's own output)
    forced_text: str | None = None  # what the model completed after the forced `Answer:` (None: not forced)


class AnswerConfig(BaseModel):
    """How AnswerUser decodes: the task (ranking scores candidates) and the eval's sampling params."""

    model_config = ConfigDict(frozen=True)

    task: TaskSpec = Field(description="The job's task.")
    max_new_tokens: int = Field(description="eval.max_new_tokens.")
    temperature: float = Field(0.0, description="eval.temperature (0: greedy).")
    seed: int | None = Field(None, description="The job's seed.")
    force_answer: bool = Field(True, description="eval.force_answer: budget forcing in think modes.")


# The start of an answer marker that the token limit cut ("Ans", "**Answer", "Final answer") at the end of
# the text, on a line or after a sentence of its own; three letters at least, so a thought that ends on
# "A" or "An" keeps its last word.
_PARTIAL_MARKER = re.compile(
    r"(?:^|\n|(?<=[.!?])[ \t]+)[ \t*#_]*(?:final\s+)?ans(?:w(?:e(?:r)?)?)?[ \t*]*[:：]?[ \t*]*\Z", re.IGNORECASE
)


def needs_forcing(parsed: ParsedOutput, finish_reason: str) -> bool:
    """Whether a think-mode output gets its answer forced: the parser reads no answer in it, and it has
    no answer line of its own — none at all, or one the token limit cut (`finish_reason` "length").

    An output that wrote a whole answer line the parser cannot read keeps it (a parse failure), and
    one whose answer the parser's fallback found keeps that.
    """
    return not parsed.ok and (not parsed.answer_line or finish_reason == "length")


def own_thinking(parsed: ParsedOutput) -> str:
    """The model's own thinking in a think-mode output: its trace ("" when there is none), without the
    start of an answer marker that the token limit cut ("…so they like it.\nAns")."""
    return _PARTIAL_MARKER.sub("", parsed.trace or "").strip()


def read_answer(text: str, forced_text: str | None, task: TaskSpec,
                candidates: Sequence[str] | None) -> tuple[ParsedOutput, str | None]:
    """The parsed answer of an output, and its trace (the model's own thinking; None if there is none).

    With `forced_text` (the completion of a forced `Answer:`), the answer is read from the closed think
    block and that completion, and is never strict: the model did not write the answer line itself.
    """
    parsed = parse_output(text, task, candidates)
    if forced_text is None:
        return parsed, parsed.trace
    thinking = own_thinking(parsed)
    forced = parse_output(answer_prefix(thinking) + forced_text, task, candidates)
    return dataclasses.replace(forced, trace=thinking or None, strict=False), thinking


def _is_think(row: dict) -> bool:
    """A think-mode row: its generation starts inside the think block (`generation_prefix`)."""
    return THINK_OPEN in row.get("prefix", "")


class AnswerUser:
    """A worker (`distributed.batch.UserWorker`): users' prompt rows through the generalist, and candidate scores.

    A row is a think-mode row when its `prefix` (`generation_prefix(mode)`) opens the think block. With
    `force_answer`, the think-mode outputs without an answer line of its own (`needs_forcing`) get their
    answer forced — budget forcing (Muennighoff et al. 2025, "s1: Simple test-time scaling",
    arXiv:2501.19393): the think block is closed after the model's own thinking and the model completes
    `Answer:` greedily within the task kind's answer budget (`answer_tokens`). All forced rows of a
    call go in one more `generate` call; the row's completion tokens are those of both calls.

    A row's `adapter` (None: the generalist itself) names the student that answers it. A call's rows
    are sent as one batched call per (adapter, kind): the direct-mode rows with the task's answer
    budget (at most `max_new_tokens`, as trace synthesis answers directly), the think-mode rows with
    `max_new_tokens` — a direct answer needs a few tokens, and a batch decodes as many steps as its
    longest row. A generalist with `generate_groups` (the Serve handle) gets a phase's groups at once.
    The direct rows go first and the think rows after them: a think prompt agrees with its example's
    direct prompt up to the last instruction, so the think rows then find most of their prompt in the
    engine's prefix cache. Sent together, a replica serving two workers ran one worker's think rows
    before the other's direct rows (oldest request first), and a chunk of rows with and without a
    cached prefix is as wide as both (measured: 13.6 s against 9.6 s for 14 think rows, 96 steps).

    For ranking tasks the answer is parsed here (after forcing), so the candidates can be scored as
    continuations of the model's own reasoning (`completion_text(candidate, trace)`): the trace is the
    same for every candidate, so the scores rank the answers given that reasoning.
    """

    config_type = AnswerConfig
    required_keys = ("example_id", "prompt")

    def __init__(self, generalist, config: AnswerConfig):
        self.generalist = generalist
        self.params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                     seed=config.seed)
        answer_budget = task_kind(config.task).answer_tokens(config.task)
        self.direct_params = dataclasses.replace(self.params, max_new_tokens=min(config.max_new_tokens, answer_budget))
        self.force_answer = config.force_answer
        self.forced_params = SamplingParams(max_new_tokens=answer_budget, temperature=0.0, seed=config.seed)
        self.task = config.task

    @staticmethod
    def batch_key(row: dict) -> tuple[str | None, bool]:
        """The engine batch a row's generation goes to: its model's adapter, and whether it thinks."""
        return row.get("adapter"), _is_think(row)

    def _generate(self, prompts: list[str], params: list[SamplingParams], adapters: list[str | None]) -> list[Generation]:
        """One generation per prompt, sent as one call per (params, adapter) group, all groups at once."""
        groups: dict[tuple[SamplingParams, str | None], list[int]] = {}
        for i, key in enumerate(zip(params, adapters)):
            groups.setdefault(key, []).append(i)
        sent = [([prompts[i] for i in idx], p, adapter) for (p, adapter), idx in groups.items()]
        many = getattr(self.generalist, "generate_groups", None)
        if many is not None:  # the Serve handle: every group's requests in flight at once
            results = many(sent)
        else:  # an engine (tests, benchmarks) is synchronous: one call after the other
            results = [self.generalist.generate(ps, p, adapter) for ps, p, adapter in sent]
        out: dict[int, Generation] = {}
        for idx, gens in zip(groups.values(), results):
            out.update(zip(idx, gens))
        return [out[i] for i in range(len(prompts))]

    def __call__(self, rows: list[dict]) -> list[dict]:
        # Think modes start inside the think block: the prefix is generated from, and read with the text.
        think = [_is_think(row) for row in rows]
        generations: dict[int, Generation] = {}
        for phase in (False, True):  # the direct rows first, then the think rows (see the class docstring)
            idx = [i for i, t in enumerate(think) if t is phase]
            if idx:
                prompts = [rows[i]["prompt"] + rows[i].get("prefix", "") for i in idx]
                params = [self.params if phase else self.direct_params] * len(idx)
                generations.update(zip(idx, self._generate(prompts, params, [rows[i].get("adapter") for i in idx])))
        out = [{"user_id": row["user_id"], "mode": row.get("mode", ""), "example_id": row["example_id"],
                "text": row.get("prefix", "") + gen.text, "completion_tokens": gen.completion_tokens,
                "finish_reason": gen.finish_reason, "scores": None, "forced": False, "forced_text": None}
               for row, gen in zip(rows, (generations[i] for i in range(len(rows))))]
        if self.force_answer:
            self._force(rows, out, think)
        if self.task.kind == "ranking":
            for row, result in zip(rows, out):
                if not row.get("candidates"):
                    continue
                parsed, trace = read_answer(result["text"], result["forced_text"], self.task, row["candidates"])
                if parsed.ok:
                    result["scores"] = self.generalist.score(
                        [row["prompt"]] * len(row["candidates"]),
                        [completion_text(c, trace) for c in row["candidates"]],
                        row.get("adapter"),
                    )
        return out

    def _force(self, rows: list[dict], out: list[dict], think: list[bool]) -> None:
        """Force the answers of the think-mode outputs that need it, in one `generate` call per adapter."""
        todo = []
        for row, result, is_think in zip(rows, out, think):
            if not is_think:
                continue  # direct modes answer as they are
            parsed = parse_output(result["text"], self.task, row.get("candidates"))
            if needs_forcing(parsed, result["finish_reason"]):
                todo.append((row, result, own_thinking(parsed)))
        if not todo:
            return
        prompts = [row["prompt"] + answer_prefix(thinking) for row, _, thinking in todo]
        adapters = [row.get("adapter") for row, _, _ in todo]
        for (_, result, _), gen in zip(todo, self._generate(prompts, [self.forced_params] * len(todo), adapters)):
            result.update(forced=True, forced_text=gen.text,
                          completion_tokens=result["completion_tokens"] + gen.completion_tokens)

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
    """The outcome the metrics read, and the parsed output (the forced answer's, for a forced row).

    The trace is always the model's own thinking, before any forcing.
    """
    forced_text = gen.forced_text if gen.forced else None
    parsed, trace = read_answer(gen.text, forced_text, task, example.candidates)
    # Asked to think, whatever the model wrote before its answer line is its thinking: an output that
    # never opens a think block (or loops until the token limit) is measured as it is, and one that
    # answers at once thought nothing ("" : 0 words), which the health metrics must show, not drop.
    # A forced answer continued exactly its `own_thinking`, which is the trace.
    if prompt_mode in THINK_MODES and not trace and forced_text is None:
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
                   strict=parsed.strict, forced=gen.forced if prompt_mode in THINK_MODES else None), parsed

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

def prompt_row(tokenizer, spec: JobSpec, example: Example, mode: EvalMode, memory: dict[str, ExampleMemory]) -> dict:
    """A worker row of AnswerUser: `mode`'s prompt for `example`, and `adapter`, the student (None: G)."""
    student, prompt_mode = MODES[mode]
    mem = memory.get(example.example_id)
    if mem is None:
        raise KeyError(f"example {example.example_id} has no row in memory/{MEMORY_FILE}")
    prompt = render_prompt(
        tokenizer, prompt_mode, task=spec.data.task, templates=spec.data.prompts, query_input=example.input,
        candidates=example.candidates, profile=mem.profile, episodes=mem.episodes,
    )
    return {"user_id": example.user_id, "example_id": example.example_id, "mode": mode.value, "prompt": prompt,
            "prefix": generation_prefix(prompt_mode), "candidates": example.candidates, "adapter": student}

def prediction_record(mode: EvalMode, split: str, example: Example, gen: Generated, task: TaskSpec) -> tuple[dict, Outcome]:
    """One line of predictions.jsonl, and the outcome the metrics read."""
    outcome, parsed = answer_outcome(example, MODES[mode][1], gen, task)
    record = {
        "mode": mode.value, "split": split, "example_id": example.example_id, "user_id": example.user_id,
        "input": example.input, "gold": example.output, "predicted": parsed.answer, "parse_error": parsed.reason,
        "strict": parsed.strict, "forced": gen.forced, "forced_text": gen.forced_text,
        "trace": outcome.trace, "text": gen.text, "completion_tokens": gen.completion_tokens,
        "finish_reason": gen.finish_reason, "gold_rank": outcome.gold_rank,
    }
    return record, outcome
