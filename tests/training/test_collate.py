"""Sequences and collation: prompt masking, truncation that keeps the answer, packing without cross-attention."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from prime_ray.data.schema import Example, Item
from prime_ray.models.loading import load_model
from prime_ray.models.prompts import completion_text, render_prompt
from prime_ray.spec import ModelSpec, PromptMode, PromptTemplates, RatingTask
from prime_ray.training.collate import collate_rows
from prime_ray.training.sequences import IGNORE_INDEX, SequenceBuilder, TrainSequence

TASK = RatingTask()
TEMPLATES = PromptTemplates()


@dataclass(frozen=True)
class Memory:
    profile: str | None
    episodes: tuple[Item, ...]


@dataclass(frozen=True)
class Trace:
    trace: str


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model(ModelSpec(name_or_path="tiny-test"), dtype="float32")  # as training loads it
    return model, tokenizer


def _example(i: int, output: str = "4", text: str | None = None) -> Example:
    return Example(example_id=f"u1/q{i}", user_id="u1", split="train", input=text or f"Some movie {i} (1999)",
                   output=output, memory_ids=[])


EPISODES = tuple(Item(id=f"h{i}", input=f"Movie number {i} (1995), a comedy", output=str(i % 5 + 1)) for i in range(6))


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_labels_mask_exactly_the_prompt(tiny):
    _, tok = tiny
    ex = _example(0)
    builder = SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=1024, answer_prompt=PromptMode.direct)
    mem = Memory("Likes comedies.", EPISODES[:2])
    out = builder.build([ex], {ex.example_id: mem}, {ex.example_id: [Trace("The user likes comedies, so 4.")]})
    direct, think = out.sequences
    assert (direct.term, think.term) == ("direct", "think")

    prompt = _encode(tok, render_prompt(tok, PromptMode.direct, task=TASK, templates=TEMPLATES, query_input=ex.input))
    completion = _encode(tok, completion_text("4")) + [tok.eos_token_id]
    assert list(direct.input_ids) == prompt + completion
    assert list(direct.labels) == [IGNORE_INDEX] * len(prompt) + completion
    assert direct.prompt_length == len(prompt)

    think_prompt = _encode(tok, render_prompt(tok, PromptMode.personal_think, task=TASK, templates=TEMPLATES,
                                              query_input=ex.input, profile=mem.profile, episodes=mem.episodes))
    assert think.prompt_length == len(think_prompt)
    assert list(think.input_ids[: len(think_prompt)]) == think_prompt
    assert tok.decode(think.labels[len(think_prompt):]) == (
        completion_text("4", "The user likes comedies, so 4.") + tok.eos_token
    )


def test_examples_without_a_kept_trace_give_only_the_direct_term(tiny):
    _, tok = tiny
    exs = [_example(i) for i in range(3)]
    memory = {ex.example_id: Memory(None, EPISODES[:1]) for ex in exs}
    traces = {exs[1].example_id: [Trace("one reason"), Trace("another reason")]}
    out = SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=1024).build(exs, memory, traces)
    terms = [(s.example_id, s.term) for s in out.sequences]
    assert terms == [("u1/q0", "direct"), ("u1/q1", "direct"), ("u1/q1", "think"), ("u1/q1", "think"), ("u1/q2", "direct")]
    assert out.counts["examples_direct_only"] == 2 and out.counts["think_sequences"] == 2
    fast = SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=1024).build(
        exs, memory, traces, include_think=False)
    assert [s.term for s in fast.sequences] == ["direct"] * 3


def _answer_tail(tok, answer: str) -> list[int]:
    return _encode(tok, "\n" + completion_text(answer).strip()) + [tok.eos_token_id]


def test_truncation_never_cuts_the_answer(tiny):
    _, tok = tiny
    long_trace = " ".join(f"step{i} the user liked movie {i} a lot." for i in range(60))
    exs = [_example(0, "5"), _example(1, "3", text="A very long input. " * 80), _example(2, "2 " * 300)]
    memory = {ex.example_id: Memory("Likes comedies and dramas.", EPISODES) for ex in exs}
    traces = {ex.example_id: [Trace(long_trace)] for ex in exs}
    max_length = 230
    out = SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=max_length,
                          answer_prompt=PromptMode.direct).build(exs, memory, traces)

    assert out.counts["dropped_answer_does_not_fit"] == 1  # example 2: its answer alone is too long
    assert {s.example_id for s in out.sequences} == {"u1/q0", "u1/q1"}
    for seq in out.sequences:
        assert len(seq) <= max_length
        completion = tok.decode([t for t in seq.labels if t != IGNORE_INDEX])
        answer = "5" if seq.example_id == "u1/q0" else "3"
        assert completion.endswith(f"Answer: {answer}{tok.eos_token}"), completion
        if seq.term == "think":
            assert completion.startswith("<think>\n") and "</think>\nAnswer:" in completion
            trace_kept = completion.split("<think>\n", 1)[1].split("\n</think>", 1)[0]
            assert long_trace.startswith(trace_kept) and len(trace_kept) < len(long_trace)
    think0 = next(s for s in out.sequences if s.example_id == "u1/q0" and s.term == "think")
    assert "past items (input" not in tok.decode(think0.input_ids[: think0.prompt_length])  # episodes went first
    assert out.counts["episodes_trimmed"] == 1 and out.counts["trace_trimmed"] == 1
    assert out.counts["input_cut"] == 1  # example 1's direct prompt lost the start of its input
    direct1 = next(s for s in out.sequences if s.example_id == "u1/q1" and s.term == "direct")
    assert "…" in tok.decode(direct1.input_ids[: direct1.prompt_length])
    assert out.counts["think_dropped_prompt_too_long"] == 1  # example 1's think prompt cannot fit


def test_the_answer_term_sees_the_users_memory_by_default(tiny):
    _, tok = tiny
    ex, bare = _example(0), _example(1)
    mem = Memory("Likes comedies.", EPISODES[:3])
    out = SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=1024).build(
        [ex, bare], {ex.example_id: mem}, {})
    direct, fallback = out.sequences
    prompt = _encode(tok, render_prompt(tok, PromptMode.personal_direct, task=TASK, templates=TEMPLATES,
                                        query_input=ex.input, profile=mem.profile, episodes=mem.episodes))
    assert list(direct.input_ids[: direct.prompt_length]) == prompt
    text = tok.decode(prompt)
    assert "Likes comedies." in text and "Movie number 2" in text and "<think>" not in text
    assert tok.decode(direct.labels[direct.prompt_length:]) == completion_text("4") + tok.eos_token
    # no memory row: the memory-free prompt, counted
    assert "past items" not in tok.decode(fallback.input_ids[: fallback.prompt_length])
    assert out.counts["direct_without_memory"] == 1

    # too long: episodes go first, least relevant (last) first
    budget = len(direct) - 5
    trimmed = SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=budget).build([ex], {ex.example_id: mem}, {})
    kept = tok.decode(trimmed.sequences[0].input_ids[: trimmed.sequences[0].prompt_length])
    assert "Movie number 0" in kept and "Movie number 2" not in kept and trimmed.counts["episodes_trimmed"] == 1


def test_episodes_are_trimmed_least_relevant_first(tiny):
    _, tok = tiny
    ex = _example(0)
    mem = Memory(None, EPISODES)
    full = SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=4096).build(
        [ex], {ex.example_id: mem}, {ex.example_id: [Trace("short")]})
    full_think = full.sequences[1]
    budget = len(full_think) - 5
    out = SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=budget).build(
        [ex], {ex.example_id: mem}, {ex.example_id: [Trace("short")]})
    think = out.sequences[1]
    prompt = tok.decode(think.input_ids[: think.prompt_length])
    assert out.counts["episodes_trimmed"] == 1 and "Movie number 0" in prompt and "Movie number 5" not in prompt
    assert tok.decode(think.labels[think.prompt_length:]) == completion_text("4", "short") + tok.eos_token


def _sequences(tok, n: int) -> list[TrainSequence]:
    exs = [_example(i, output=str(i % 5 + 1)) for i in range(n)]
    memory = {ex.example_id: Memory("Likes comedies.", EPISODES[: i % 4]) for i, ex in enumerate(exs)}
    traces = {ex.example_id: [Trace("the user " * (3 + 5 * (i % 3)))] for i, ex in enumerate(exs) if i % 2}
    return SequenceBuilder(tok, task=TASK, templates=TEMPLATES, max_length=1024).build(exs, memory, traces).sequences


def test_packed_logits_equal_the_logits_of_each_sequence_alone(tiny):
    model, tok = tiny
    seqs = _sequences(tok, 4)[:4]
    packed = collate_rows(seqs, [[0, 1], [2, 3]], pad_id=tok.pad_token_id, packed=True)
    assert packed.attention_mask is None and packed.tokens == sum(len(s) for s in seqs)
    with torch.no_grad():
        logits = model(**packed.model_inputs(), use_cache=False).logits
        flat = packed.model_inputs()
        flat["position_ids"] = torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids)
        leaky = model(**flat, use_cache=False).logits  # one long sequence per row: attends across
        for row, pair in enumerate([[0, 1], [2, 3]]):
            start = 0
            for i in pair:
                alone = model(input_ids=torch.tensor([seqs[i].input_ids]), use_cache=False).logits[0]
                end = start + len(seqs[i])
                torch.testing.assert_close(logits[row, start:end], alone, atol=1e-4, rtol=1e-4)
                if start > 0:  # the control: without restarting positions the second sequence differs
                    assert (leaky[row, start:end] - alone).abs().max() > 1e-2
                start = end

        padded = collate_rows(seqs, [[0], [1], [2]], pad_id=tok.pad_token_id, packed=False)
        logits = model(**padded.model_inputs(), use_cache=False).logits
        for row in range(3):
            alone = model(input_ids=torch.tensor([seqs[row].input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(logits[row, : len(seqs[row])], alone, atol=1e-4, rtol=1e-4)
