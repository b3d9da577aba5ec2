"""From examples, memory and kept traces to token sequences (one per term of the objective).

Each training example gives the student up to two kinds of sequence (one *term* of the objective each):

    direct:  render_prompt(personal-direct, x, profile, eps) -> completion_text(y)          + EOS
    think:   render_prompt(personal-think, x, profile, eps)  -> completion_text(y, trace)   + EOS

The answer term's prompt is `train.answer_prompt`: `personal-direct` (the default: the same memory the
think term sees, so the fast-thinking student, trained on this term alone, can learn to use the user's
memory without thinking: the fair baseline) or `direct` (the query only). Labels are -100 on prompt
tokens, so only the completion is learned. An example without a kept trace gives only its direct
sequence. Truncation never cuts the answer: a prompt with memory loses its least relevant episodes
first; then a think sequence's trace is shortened and a direct prompt loses the start of the query
input. When even the shortest prompt and the answer do not fit in `max_length`, the example (or its
think sequence) is dropped and the reason is counted.

Sequences become batches in `collate.py`; `plan.py` decides which sequences each worker uses per step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from transformers import PreTrainedTokenizerBase

from prime_ray.data.schema import Example, Item
from prime_ray.models.prompts import completion_text, render_prompt
from prime_ray.spec import PromptMode, PromptTemplates, TaskSpec

IGNORE_INDEX = -100
Term = Literal["direct", "think"]
TERM_IDS: dict[str, int] = {"direct": 0, "think": 1}
# A direct prompt whose query input must be cut keeps at least this much of its end; shorter is no prompt.
MIN_INPUT_CHARS = 64
ELLIPSIS = "…"


class MemoryLike(Protocol):
    """What collation reads of an example's memory (prime_ray.memory.store.ExampleMemory)."""

    @property
    def profile(self) -> str | None: ...

    @property
    def episodes(self) -> tuple[Item, ...]: ...


class TraceLike(Protocol):
    """What collation reads of a kept trace (prime_ray.traces.store.KeptTrace)."""

    @property
    def trace(self) -> str: ...


@dataclass(frozen=True)
class TrainSequence:
    """One tokenized training sequence: prompt then completion, labels -100 on the prompt."""

    example_id: str
    term: Term
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def prompt_length(self) -> int:
        return next((i for i, label in enumerate(self.labels) if label != IGNORE_INDEX), len(self.labels))


@dataclass
class Collation:
    """The sequences, and counts of what was trimmed or dropped (and why)."""

    sequences: list[TrainSequence] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


class SequenceBuilder:
    """Tokenizes examples into direct and think sequences that fit in `max_length` tokens."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, task: TaskSpec, templates: PromptTemplates, max_length: int,
        answer_prompt: PromptMode = PromptMode.personal_direct,
    ):
        self.tokenizer = tokenizer
        self.task = task
        self.templates = templates
        self.max_length = max_length
        self.answer_prompt = PromptMode(answer_prompt)
        if self.answer_prompt not in (PromptMode.direct, PromptMode.personal_direct):
            raise ValueError(f"the answer term needs a direct prompt mode, not {self.answer_prompt.value!r}")
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def build(
        self,
        examples: Sequence[Example],
        memory: Mapping[str, MemoryLike],
        traces: Mapping[str, Sequence[TraceLike]],
        *,
        include_think: bool = True,
    ) -> Collation:
        out = Collation()
        for example in examples:
            out.counts["examples"] += 1
            mem = memory.get(example.example_id)
            direct = self.direct_sequence(example, out.counts, mem)
            if direct is None:
                out.counts["dropped_answer_does_not_fit"] += 1
                continue
            out.sequences.append(direct)
            kept = traces.get(example.example_id, ()) if include_think else ()
            if not kept:
                out.counts["examples_direct_only"] += 1
                continue
            if mem is None:
                raise KeyError(f"example {example.example_id!r} has kept traces but no memory row")
            for trace in kept:
                think = self.think_sequence(example, mem, trace.trace, out.counts)
                if think is None:
                    out.counts["think_dropped_prompt_too_long"] += 1
                else:
                    out.sequences.append(think)
        out.counts["direct_sequences"] = sum(s.term == "direct" for s in out.sequences)
        out.counts["think_sequences"] = sum(s.term == "think" for s in out.sequences)
        return out

    # ------------------------------------------------------------------------------ sequences

    def direct_sequence(
        self, example: Example, counts: Counter | None = None, memory: MemoryLike | None = None
    ) -> TrainSequence | None:
        """Prompt + `Answer: y`. With a personal-direct answer prompt, the episodes go first (least relevant
        first), then the query input loses its start, if that is what it takes to fit. An example without
        a memory row gets the memory-free direct prompt (counted as `direct_without_memory`)."""
        counts = counts if counts is not None else Counter()
        completion = self._encode(completion_text(example.output)) + self.eos
        budget = self.max_length - len(completion)
        mode = PromptMode.direct
        profile: str | None = None
        episodes: tuple[Item, ...] = ()
        if self.answer_prompt == PromptMode.personal_direct:
            if memory is None:
                counts["direct_without_memory"] += 1
            else:
                mode, profile, episodes = PromptMode.personal_direct, memory.profile, tuple(memory.episodes)
        for keep in range(len(episodes), 0, -1):
            prompt = self._encode(self._render(mode, example, example.input, profile, episodes[:keep]))
            if len(prompt) <= budget:
                if keep < len(episodes):
                    counts["episodes_trimmed"] += 1
                return _sequence(example.example_id, "direct", prompt, completion)
        if episodes:
            counts["episodes_trimmed"] += 1

        def prompt_for(query_input: str) -> list[int]:
            return self._encode(self._render(mode, example, query_input, profile))

        prompt = prompt_for(example.input)
        if len(prompt) > budget:
            cut = self._cut_input_from_left(example.input, prompt_for, budget)
            if cut is None:
                return None
            prompt = cut
            counts["input_cut"] += 1
        return _sequence(example.example_id, "direct", prompt, completion)

    def think_sequence(
        self, example: Example, memory: MemoryLike, trace: str, counts: Counter | None = None
    ) -> TrainSequence | None:
        """Personal-think prompt + trace + answer: drop episodes (least relevant first), then shorten the trace."""
        counts = counts if counts is not None else Counter()
        completion = self._encode(completion_text(example.output, trace)) + self.eos
        episodes = tuple(memory.episodes)
        for keep in range(len(episodes), -1, -1):
            prompt = self._think_prompt(example, memory.profile, episodes[:keep])
            if len(prompt) + len(completion) <= self.max_length:
                if keep < len(episodes):
                    counts["episodes_trimmed"] += 1
                return _sequence(example.example_id, "think", prompt, completion)
        # No episode left and still too long: keep the longest start of the trace that fits.
        words = trace.split()
        budget = self.max_length - len(prompt)

        def completion_for(n_words: int) -> list[int]:
            return self._encode(completion_text(example.output, " ".join(words[:n_words]))) + self.eos

        lo, hi, best = 1, len(words) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = completion_for(mid)
            if len(candidate) <= budget:
                best, lo = candidate, mid + 1
            else:
                hi = mid - 1
        if best is None:
            return None
        counts["trace_trimmed"] += 1
        if episodes:
            counts["episodes_trimmed"] += 1
        return _sequence(example.example_id, "think", prompt, best)

    # ------------------------------------------------------------------------------- helpers

    def _think_prompt(self, example: Example, profile: str | None, episodes: tuple[Item, ...]) -> list[int]:
        return self._encode(self._render(PromptMode.personal_think, example, example.input, profile, episodes))

    def _render(self, mode: PromptMode, example: Example, query_input: str, profile=None, episodes=()) -> str:
        return render_prompt(
            self.tokenizer,
            mode,
            task=self.task,
            templates=self.templates,
            query_input=query_input,
            candidates=example.candidates,
            profile=profile,
            episodes=episodes,
        )

    def _cut_input_from_left(self, text: str, prompt_for, budget: int) -> list[int] | None:
        """The prompt whose input keeps the longest end of `text` (at least MIN_INPUT_CHARS) that fits."""
        longest_cut = len(text) - min(len(text), MIN_INPUT_CHARS)
        lo, hi, best = 1, longest_cut, None
        while lo <= hi:  # smallest cut that fits
            mid = (lo + hi) // 2
            prompt = prompt_for(ELLIPSIS + text[mid:])
            if len(prompt) <= budget:
                best, hi = prompt, mid - 1
            else:
                lo = mid + 1
        return best

    def _encode(self, text: str) -> list[int]:
        # The chat template writes its special tokens as text: the tokenizer must not add more.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _sequence(example_id: str, term: Term, prompt: list[int], completion: list[int]) -> TrainSequence:
    return TrainSequence(
        example_id=example_id,
        term=term,
        input_ids=tuple(prompt + completion),
        labels=tuple([IGNORE_INDEX] * len(prompt) + completion),
    )
