"""From examples, memory and kept traces to token sequences, and from sequences to batches.

Each training example gives the student up to two kinds of sequence (one *term* of the objective each):

    direct:  render_prompt(personal-direct, x, profile, eps) -> completion_text(y)          + EOS
    think:   render_prompt(personal-think, x, profile, eps)  -> completion_text(y, trace)   + EOS

The answer term's prompt is `train.answer_prompt`: `personal-direct` (the default: the same memory the
think term sees, so the fast-thinking student, trained on this term alone, can learn to use the user's
memory without thinking: the fair baseline) or `direct` (the query only). Labels are -100 on prompt
tokens (and on padding), so only the completion is learned. An example without a kept trace gives only
its direct sequence. Truncation never cuts the answer: a prompt with memory loses its least relevant
episodes first; then a think sequence's trace is shortened and a direct prompt loses the start of the
query input. When even the shortest prompt and the answer do not fit in `max_length`, the
example (or its think sequence) is dropped and the reason is counted.

Batches are either padded (one sequence per row, right padding, an attention mask) or packed (several
sequences per row of at most `max_length` tokens). Packed rows carry `position_ids` that restart at 0
for every sequence and no attention mask: transformers' Llama-family models then build a block-diagonal
causal mask from the position ids (for eager and SDPA attention alike), so packed sequences never
attend to each other.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Mapping, Protocol, Sequence

import torch

from prime_ray.data.schema import Example, Item
from prime_ray.models.prompts import completion_text, render_prompt
from prime_ray.spec import PromptMode, PromptTemplates

IGNORE_INDEX = -100
Term = Literal["direct", "think"]
TERM_IDS: dict[str, int] = {"direct": 0, "think": 1}
# A direct prompt whose query input must be cut keeps at least this much of its end; shorter is no prompt.
MIN_INPUT_CHARS = 64
ELLIPSIS = "…"


class MemoryLike(Protocol):
    """What collation reads of an example's memory (prime_ray.memory.store.ExampleMemory)."""

    profile: str | None
    episodes: tuple[Item, ...]


class TraceLike(Protocol):
    """What collation reads of a kept trace (prime_ray.traces.store.KeptTrace)."""

    trace: str


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

    def __init__(self, tokenizer, *, task, templates: PromptTemplates, max_length: int,
                 answer_prompt: PromptMode = PromptMode.personal_direct):
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
        mode, profile, episodes = PromptMode.direct, None, ()
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
            prompt = self._cut_input_from_left(example.input, prompt_for, budget)
            if prompt is None:
                return None
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


# ------------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    """Model inputs and loss targets of one micro-batch.

    `terms` holds each token's term id (0 direct, 1 think) where `labels` is not -100. Packed batches
    have `attention_mask=None` and restarting `position_ids`; padded batches have both.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    terms: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    tokens: int  # non-padding tokens

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), move(self.terms), move(self.position_ids),
                     move(self.attention_mask), self.tokens)

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()


Row = list[int]  # indices into the sequence list; one element per padded row, several per packed row


def collate_rows(sequences: Sequence[TrainSequence], rows: Sequence[Row], *, pad_id: int, packed: bool) -> Batch:
    """Tensors for rows of sequences (right padding to the longest row)."""
    width = max(sum(len(sequences[i]) for i in row) for row in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    terms = torch.zeros((n, width), dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    tokens = 0
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            seq = sequences[i]
            end = start + len(seq)
            input_ids[r, start:end] = torch.tensor(seq.input_ids)
            labels[r, start:end] = torch.tensor(seq.labels)
            terms[r, start:end] = TERM_IDS[seq.term]
            position_ids[r, start:end] = torch.arange(len(seq))
            attention_mask[r, start:end] = 1
            start = end
        tokens += start
        # Padding gets its own restarting positions: in a packed row it is one more block of its own.
        position_ids[r, start:] = torch.arange(width - start)
    return Batch(input_ids, labels, terms, position_ids, None if packed else attention_mask, tokens)


def pack_rows(lengths: Sequence[int], capacity: int) -> list[Row]:
    """Best-fit decreasing bin packing of sequence lengths into rows of at most `capacity` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[Row] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"sequence {i} has {lengths[i]} tokens, more than the row capacity {capacity}")
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            bisect.insort(free, (capacity - lengths[i], len(rows) - 1))
        else:
            room, r = free.pop(at)
            rows[r].append(i)
            bisect.insort(free, (room - lengths[i], r))
    return rows


class StepPlan:
    """Which sequences each worker uses at each optimizer step: deterministic, so a restart resumes exactly.

    An epoch shuffles the sequences (seed + epoch), forms rows (one sequence each, or packed), and cuts
    them into micro-batches of `micro_batch_size` rows. Step s of the epoch uses micro-batches
    [s·W·A, (s+1)·W·A) of which worker r takes every W-th from r (W workers, A accumulation steps).
    An incomplete last step is dropped. With `max_steps`, epochs repeat until that many steps are done.
    """

    def __init__(
        self,
        sequences: Sequence[TrainSequence],
        *,
        micro_batch_size: int,
        grad_accum: int,
        world_size: int,
        packing: bool,
        max_length: int,
        seed: int,
        epochs: int,
        max_steps: int | None = None,
    ):
        self.sequences = sequences
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.packing = packing
        self.max_length = max_length
        self.seed = seed
        self._epochs: dict[int, list[list[Row]]] = {}
        per_step = world_size * grad_accum
        self.steps_per_epoch = len(self._epoch(0)) // per_step
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(sequences)} training sequences make {len(self._epoch(0))} micro-batches of "
                f"{micro_batch_size}: too few for one step of {world_size} worker(s) × grad_accum {grad_accum}"
            )
        self.total_steps = max_steps if max_steps is not None else epochs * self.steps_per_epoch

    def _epoch(self, epoch: int) -> list[list[Row]]:
        if epoch not in self._epochs:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            order = list(range(len(self.sequences)))
            rng.shuffle(order)
            if self.packing:
                packed = pack_rows([len(self.sequences[i]) for i in order], self.max_length)
                rows = [[order[j] for j in row] for row in packed]
                rng.shuffle(rows)
            else:
                rows = [[i] for i in order]
            size = self.micro_batch_size
            self._epochs = {epoch: [rows[i : i + size] for i in range(0, len(rows), size)]}
        return self._epochs[epoch]

    def micro_batches(self, step: int, rank: int) -> list[list[Row]]:
        """The `grad_accum` micro-batches (each a list of rows) of worker `rank` at optimizer step `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        per_step = self.world_size * self.grad_accum
        chunk = self._epoch(epoch)[within * per_step : (within + 1) * per_step]
        return chunk[rank :: self.world_size]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch
