"""Trace synthesis for one user's training examples (plain compute: G is any engine or Serve handle).

Per example, in this order:
1. direct answer by G (greedy): a statistic, and optionally a fast filter (`drop_if_direct_correct`);
2. rationalization: G sees the input, the user's memory and the gold answer as a hint, and writes the
   reasoning; `samples_per_example` samples (sample s is seeded `derive_seed(seed, "traces", s)`, so a
   sample index has the same params for every example and the deployment batches them together). The generation is
   started inside the think block (`<think>\\n` and the spec's `trace_opening` end the prompt), which
   small models need to follow the format;
3. verification: the trace's final answer must be the gold one. The answer is the one written after
   the trace; a trace that ended without one gets the answer G completes from the trace alone,
   without the hint; with `answer_without_hint`, that hint-free answer is asked for every trace and
   must be right too. A trace cut at `max_new_tokens` before any answer is unparseable;
4. likelihood gain `log p(y | x, trace) − log p(y | x)` under that no-hint prompt (a score column for
   every task; the ranking filter for free text);
5. the filters of `filters.py`, with one verdict per filter on every row.

One row per sample. An example for which no trace is sampled (already answered right directly, or an
error before sampling) has one row with `sample_index` -1. An example whose processing raises gets
its error on its rows; the other examples of the user go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from prime_ray.data.schema import Example, Item
from prime_ray.engine.base import Generation, SamplingParams
from prime_ray.memory.profiles import Generalist
from prime_ray.models.parser import is_correct, parse_output
from prime_ray.models.prompts import THINK_OPEN, answer_prefix, render_prompt
from prime_ray.spec import JobSpec, PromptMode, PromptTemplates, TaskSpec, derive_seed
from prime_ray.tasks import task_kind
from prime_ray.traces import filters as F

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prime_ray.memory.store import ExampleMemory

logger = logging.getLogger(__name__)
T = TypeVar("T")
W = TypeVar("W")


def answer_tokens(task: TaskSpec) -> int:
    """New tokens enough for an answer line of the task (the task kind's budget)."""
    return task_kind(task).answer_tokens(task)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _each(call: Callable[[list[W]], Sequence[T]], items: list[W]) -> list[T | BaseException]:
    """Call on all items; if the call fails, once per item, so one bad item fails alone."""
    if not items:
        return []
    try:
        return list(call(items))
    except Exception:  # noqa: BLE001 - isolated below
        logger.warning("a batched call failed; retrying item by item", exc_info=True)
    out: list[T | BaseException] = []
    for item in items:
        try:
            out.append(call([item])[0])
        except Exception as e:  # noqa: BLE001 - recorded on the row
            out.append(e)
    return out


@dataclass
class _Work:
    """One example in flight."""

    row: dict[str, Any]
    example: Example | None = None
    hinted_prompt: str = ""
    plain_prompt: str = ""
    direct_prompt: str | None = None
    direct_answer: str | None = None
    direct_correct: bool | None = None
    direct_tokens: int = 0
    baseline_logp: float | None = None
    error: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ex(self) -> Example:
        """The example, once `_prepare` has read it (every step after it works on prepared examples)."""
        assert self.example is not None, "example not prepared"
        return self.example


class _PromptArgs(TypedDict):
    """The `render_prompt` arguments an example's prompts share."""

    task: TaskSpec
    templates: PromptTemplates
    query_input: str
    candidates: list[str] | None
    profile: str | None
    episodes: tuple[Item, ...]


class SynthesisConfig(BaseModel):
    """What a synthesizer needs: the job's spec, and the traces stage's config hash (stamped on rows)."""

    model_config = ConfigDict(frozen=True)

    spec: JobSpec = Field(description="The job's spec: model, task, prompts, traces and filters.")
    config_hash: str = Field(description="The traces stage's config hash, written on every row.")


class TraceSynthesizer:
    """Callable on the rows of one or more users, `{"user_id", "example": Example dict, "prompts":
    {"hinted", "plain", "direct"}}` (`synthesis_row`); each step is sent for up to
    `generalist.rows_per_call` rows at once."""

    config_type = SynthesisConfig
    required_keys = ("example", "prompts")

    def __init__(self, generalist: Generalist, config: SynthesisConfig):
        self.g = generalist
        self.spec = config.spec
        self.config_hash = config.config_hash
        self.task = self.spec.data.task
        self.traces = self.spec.traces
        self.filters = self.spec.traces.filters

    # ------------------------------------------------------------------------------------ steps

    def _prepare(self, work: _Work) -> None:
        work.example = Example.model_validate(work.row["example"])
        prompts = work.row["prompts"]
        work.hinted_prompt, work.plain_prompt, work.direct_prompt = prompts["hinted"], prompts["plain"], prompts["direct"]

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[Generation | BaseException]:
        return _each(lambda ps: self.g.generate(ps, params), prompts)

    def _direct(self, works: list[_Work]) -> None:
        asked = [(w, w.direct_prompt) for w in works if w.direct_prompt is not None]
        params = SamplingParams(max_new_tokens=answer_tokens(self.task), temperature=0.0, seed=self.spec.seed)
        for (w, _), gen in zip(asked, self._generate([prompt for _, prompt in asked], params)):
            if isinstance(gen, BaseException):
                w.error = _error(gen)
                continue
            parsed = parse_output(gen.text, self.task, w.ex.candidates)
            w.direct_answer = parsed.answer
            w.direct_correct = parsed.ok and is_correct(self.task, parsed.answer, w.ex.output)
            w.direct_tokens = gen.completion_tokens

    def _opening(self) -> str:
        return THINK_OPEN + "\n" + self.traces.trace_opening

    def _rationalize(self, works: list[_Work]) -> None:
        for s in range(self.traces.samples_per_example):
            params = SamplingParams(
                max_new_tokens=self.traces.max_new_tokens,
                temperature=self.traces.temperature,
                top_p=self.traces.top_p,
                seed=derive_seed(self.spec.seed, "traces", s),
            )
            for w, gen in zip(works, self._generate([w.hinted_prompt + self._opening() for w in works], params)):
                w.samples.append(self._sample(w, s, gen))

    def _sample(self, w: _Work, index: int, gen: Generation | BaseException) -> dict[str, Any]:
        sample: dict[str, Any] = {"sample_index": index, "raw_text": None, "trace": None, "answer": None,
                                  "tokens": 0, "error": None}
        if isinstance(gen, BaseException):
            sample["error"] = _error(gen)
            return sample
        raw = self._opening() + gen.text
        parsed = parse_output(raw, self.task, w.ex.candidates)
        sample.update(raw_text=raw, tokens=gen.completion_tokens, answer=parsed.answer,
                      trace=(parsed.trace or "").strip() or None, finished=gen.finish_reason == "stop")
        return sample

    def _complete_answers(self, works: list[_Work]) -> None:
        """The answer G reaches from the trace alone, WITHOUT the hint: the hint-free prompt, the trace in
        the think block, and G completes `Answer:` greedily.

        Asked for every trace with `answer_without_hint`; otherwise only for traces that ended on their
        own without an answer line (small models often stop after the reasoning): their answer is the
        completed one, so it comes from the trace and not from the hint.
        """
        strict = self.filters.answer_without_hint
        todo = [(w, s) for w in works for s in w.samples
                if s["trace"] is not None and (strict or (s["answer"] is None and s["finished"]))]
        params = SamplingParams(max_new_tokens=answer_tokens(self.task), temperature=0.0, seed=self.spec.seed)
        gens = _each(
            lambda pairs: self.g.generate([w.plain_prompt + answer_prefix(s["trace"]) for w, s in pairs], params), todo
        )
        for (w, s), gen in zip(todo, gens):
            if isinstance(gen, BaseException):
                s["error"] = _error(gen)
                continue
            s["tokens"] += gen.completion_tokens
            parsed = parse_output(answer_prefix(s["trace"]) + gen.text, self.task, w.ex.candidates)
            s["answer_without_hint"] = parsed.answer
            if s["answer"] is None and s["finished"]:  # a trace cut off before its answer stays unparseable
                s["answer"] = parsed.answer

    def _gains(self, works: list[_Work]) -> None:
        """log p(y | x, trace) − log p(y | x), both under the no-hint personal-think prompt."""
        pairs: list[tuple[_Work, dict | None]] = []
        for w in works:
            pairs.append((w, None))
            pairs.extend((w, s) for s in w.samples if s["trace"] is not None)

        def score(batch: list[tuple[_Work, dict | None]]) -> list[float]:
            prompts = [w.plain_prompt + answer_prefix(s["trace"] if s else None) for w, s in batch]
            continuations = [" " + w.ex.output.strip() for w, _ in batch]
            return self.g.score(prompts, continuations)

        for (w, s), logp in zip(pairs, _each(score, pairs)):
            if isinstance(logp, BaseException):
                if s is not None:
                    s["error"] = s["error"] or _error(logp)
                continue
            if s is None:
                w.baseline_logp = logp
            elif w.baseline_logp is not None:
                s["gain"] = logp - w.baseline_logp

    def _answer_ok(self, s: dict[str, Any], gold: str) -> bool | None:
        if not task_kind(self.task).exact_answer:
            return None  # no exact answer to match (free text): the likelihood gain ranks it
        answers = [s["answer"]] + ([s.get("answer_without_hint")] if self.filters.answer_without_hint else [])
        return all(a is not None and is_correct(self.task, a, gold) for a in answers)

    def _judge(self, w: _Work) -> None:
        gold = w.ex.output
        for s in w.samples:
            if s["error"] is not None:
                s["verdicts"], s["kept"] = None, False
                continue
            readable = s["trace"] if s["answer"] is not None else None  # a trace without an answer is unparseable
            s["verdicts"] = F.verdicts(trace=readable, answer_ok=self._answer_ok(s, gold), gold=gold,
                                       filters=self.filters)
            s["verdicts"]["enough_gain"] = F.gain_passes(s.get("gain"), self.task, self.filters)
        judged = [s for s in w.samples if s["verdicts"] is not None]
        if not task_kind(self.task).exact_answer:
            eligible = [all(s["verdicts"][n] for n in F.applied_filters(self.task, self.filters)) for s in judged]
            # `enough_gain` already holds the threshold verdict; the ranking keeps the best of those that pass it
            top = F.rank_by_gain([s.get("gain") for s in judged], eligible, self.filters.text_keep_top)
            for s, best in zip(judged, top):
                s["verdicts"]["enough_gain"] = best
        for s in judged:
            s["kept"] = F.keep(s["verdicts"], self.task, self.filters)

    def _synthesize(self, works: list[_Work]) -> None:
        self._direct(works)
        live = [w for w in works if w.error is None and not (self.filters.drop_if_direct_correct and w.direct_correct)]
        self._rationalize(live)
        self._complete_answers(live)
        self._gains(live)

    # ------------------------------------------------------------------------------------- rows

    def _row(self, w: _Work, s: dict[str, Any] | None) -> dict[str, Any]:
        ex = w.example
        s = s or {"sample_index": -1, "tokens": 0, "error": None}
        trace = s.get("trace")
        return {
            "user_id": ex.user_id if ex else str(w.row.get("user_id")),
            "example_id": ex.example_id if ex else str(w.row.get("example", {}).get("example_id")),
            "sample_index": s["sample_index"],
            "prompt": w.hinted_prompt or None,
            "raw_text": s.get("raw_text"),
            "trace": trace,
            "answer": s.get("answer"),
            "answer_without_hint": s.get("answer_without_hint"),
            "gold": ex.output if ex else None,
            "kept": bool(s.get("kept", False)),
            "verdicts": s.get("verdicts"),
            "likelihood_gain": s.get("gain"),
            "repetition": F.repetition(trace or s.get("raw_text") or "") if s.get("raw_text") else None,
            "direct_answer": w.direct_answer,
            "direct_correct": w.direct_correct,
            # everything generated for this row; the example's direct answer counts on its first row
            "generated_tokens": s["tokens"] + (w.direct_tokens if s["sample_index"] <= 0 else 0),
            "error": w.error or s.get("error"),
            "model": self.spec.model.name_or_path,
            "config_hash": self.config_hash,
        }

    def __call__(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        works = [_Work(row=dict(r)) for r in rows]
        for w in works:
            try:
                self._prepare(w)
            except Exception as e:  # noqa: BLE001 - a bad row is recorded, the others go on
                w.error = _error(e)
        step = self.spec.generalist.resolved_rows_per_call
        for start in range(0, len(works), step):
            self._synthesize([w for w in works[start : start + step] if w.error is None])
        out: list[dict[str, Any]] = []
        for w in works:
            if w.error is None and w.samples:
                self._judge(w)
                out.extend(self._row(w, s) for s in w.samples)
            else:
                out.append(self._row(w, None))
        return out


def synthesis_row(tokenizer: PreTrainedTokenizerBase, spec: JobSpec, example: Example,
                  memory: ExampleMemory) -> dict[str, Any]:
    """A `TraceSynthesizer` row: the example and its prompts, rendered with G's tokenizer.

    `prompts`: `hinted` (personal-think with the gold answer as a hint: the rationalization), `plain`
    (the same without the hint: hint-free answers and likelihood gains), `direct` (the direct answer;
    None unless `traces.direct_answer` or `filters.drop_if_direct_correct` asks for it). Rendered on
    the driver, so the Ray Data workers load no tokenizer (2.6 s each on 2 CPU cores).
    """
    common = _PromptArgs(task=spec.data.task, templates=spec.data.prompts, query_input=example.input,
                         candidates=example.candidates, profile=memory.profile, episodes=tuple(memory.episodes))
    direct = spec.traces.direct_answer or spec.traces.filters.drop_if_direct_correct
    return {
        "user_id": example.user_id,
        "example": example.model_dump(mode="json"),
        "prompts": {
            "hinted": render_prompt(tokenizer, PromptMode.personal_think, hint=example.output, **common),
            "plain": render_prompt(tokenizer, PromptMode.personal_think, **common),
            "direct": render_prompt(tokenizer, PromptMode.direct, **common) if direct else None,
        },
    }


def synthesis_rows(ingest_dir: Path, memory_dir: Path, spec: JobSpec,
                   tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]]:
    """The synthesizer's input: one `synthesis_row` per training example."""
    from prime_ray.data.store import read_examples
    from prime_ray.memory.store import MEMORY_FILE, read_memory

    memory = read_memory(memory_dir / MEMORY_FILE)
    rows = []
    for ex in read_examples(ingest_dir / "examples.parquet", split="train"):
        if ex.example_id not in memory:
            raise KeyError(f"example {ex.example_id} has no row in {memory_dir / MEMORY_FILE}")
        rows.append(synthesis_row(tokenizer, spec, ex, memory[ex.example_id]))
    return rows
