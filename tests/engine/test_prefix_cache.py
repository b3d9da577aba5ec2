"""Automatic prefix caching: the block cache itself, and the transformers engine reading from it."""

from __future__ import annotations

import pytest
import torch

from prime_ray.engine import SamplingParams, create_engine
from prime_ray.engine.prefix_cache import PrefixCache
from prime_ray.models.prompts import answer_prefix, render_prompt
from prime_ray.spec import ModelSpec, PromptMode, PromptTemplates, RatingTask

TINY = ModelSpec(name_or_path="tiny-test", dtype="float32")  # exact comparisons: see test_engine_hf
LAYERS, HEADS, DIM = 2, 1, 3


def kv_for(tokens: list[int]) -> torch.Tensor:
    """A recognisable KV `[layers, 2, heads, len, dim]`: every entry is its token's id."""
    return torch.tensor(tokens, dtype=torch.float32).view(1, 1, 1, -1, 1).expand(LAYERS, 2, HEADS, -1, DIM).clone()


def fill(cache: PrefixCache, namespace, tokens: list[int]) -> list[tuple[int, int]]:
    asked: list[tuple[int, int]] = []

    def kv_of(start: int, end: int) -> torch.Tensor:
        asked.append((start, end))
        return kv_for(tokens[start:end])

    cache.insert(namespace, tokens, kv_of)
    return asked


def test_a_prompt_gets_its_cached_whole_blocks_and_keeps_a_token_to_compute():
    cache = PrefixCache(1 << 20, block_size=4, min_tokens=4)
    seq = list(range(100, 111))  # 11 tokens: blocks 0..3, 4..7 kept, the last 3 tokens dropped
    fill(cache, None, seq)
    length, kv = cache.lookup(None, seq[:9] + [7, 7])  # shares 9 tokens: 2 whole blocks
    assert length == 8 and torch.equal(kv, kv_for(seq[:8]))
    # the same 8 tokens as a whole prompt: the last block is held back, its last token must be computed
    assert cache.lookup(None, seq[:8])[0] == 4
    assert cache.lookup(None, [1] + seq[1:]) == (0, None)  # a different first token: nothing shared
    assert cache.lookup("student", seq) == (0, None)  # another adapter's KV is not this one's
    assert cache.stats.hit_tokens == 12


def test_a_shorter_hit_than_min_tokens_is_no_hit():
    cache = PrefixCache(1 << 20, block_size=4, min_tokens=8)
    fill(cache, None, list(range(12)))
    assert cache.lookup(None, list(range(6)) + [99]) == (0, None)
    assert cache.lookup(None, list(range(9)))[0] == 8


def test_only_the_blocks_not_cached_yet_are_copied():
    cache = PrefixCache(1 << 20, block_size=4, min_tokens=4)
    assert fill(cache, None, list(range(8))) == [(0, 8)]
    assert fill(cache, None, list(range(14))) == [(8, 12)]  # blocks 0 and 1 are there
    assert fill(cache, None, list(range(12))) == []
    assert cache.stats.stored_blocks == 3


def test_eviction_is_least_recently_used_and_takes_a_prefix_tail_first():
    block_bytes = LAYERS * 2 * HEADS * 4 * DIM * 4  # float32
    cache = PrefixCache(3 * block_bytes, block_size=4, min_tokens=4)
    fill(cache, None, list(range(12)))  # blocks a0 a1 a2: full
    fill(cache, None, [50] * 4)  # one more block: the oldest goes, which is a's tail
    assert cache.nbytes == 3 * block_bytes and cache.stats.evicted_blocks == 1
    assert cache.lookup(None, list(range(12)) + [0])[0] == 8  # a's head still serves
    fill(cache, None, [60] * 4)  # the least recently used now is the [50] block, not a's head
    assert cache.lookup(None, [50] * 5) == (0, None)
    assert cache.lookup(None, list(range(9)))[0] == 8


def test_kv_of_the_wrong_length_is_refused():
    cache = PrefixCache(1 << 20, block_size=4)
    with pytest.raises(ValueError, match="KV of 3 positions"):
        cache.insert(None, list(range(8)), lambda start, end: kv_for(list(range(3))))


# ------------------------------------------------------------------------------------ the engine


@pytest.fixture(scope="module")
def engines():
    """The same model with and without a prefix cache; batches of 2, so calls have several chunks."""
    plain = create_engine(TINY, device="cpu", max_batch_size=2)
    cached = create_engine(TINY, device="cpu", max_batch_size=2, prefix_cache_mib=64)
    yield plain, cached
    plain.close()
    cached.close()


def _prompts(tokenizer, mode: PromptMode, hint: str | None = None) -> list[str]:
    """Personal prompts of three lengths (the episodes differ), all sharing their opening."""
    from prime_ray.data.schema import Item

    episodes = [Item(id=f"h{i}", input=f"Movie {i} ({1990 + i})", output=str(1 + i % 5)) for i in range(6)]
    return [
        render_prompt(tokenizer, mode, task=RatingTask(), templates=PromptTemplates(), query_input=f"Heat ({1990 + n})",
                      profile="Likes crime films and long thrillers.", episodes=episodes[:n], hint=hint)
        for n in (1, 3, 6)
    ]


def test_generation_and_scores_read_from_the_cache_and_equal_those_computed_whole(engines):
    plain, cached = engines
    tok = cached.tokenizer
    greedy, sampled = SamplingParams(max_new_tokens=10), SamplingParams(max_new_tokens=10, temperature=0.8, seed=3)
    think = [p + "<think>\n" for p in _prompts(tok, PromptMode.personal_think, hint="4")]
    # the first call fills the cache: nothing is shared yet, and it generates what the plain engine does
    first = cached.generate(think, sampled)
    assert first == plain.generate(think, sampled)
    assert cached.prefix_cache.stats.hit_tokens == 0 and cached.prefix_cache.stats.stored_blocks > 0
    # a hint-free prompt agrees with its hinted one up to the hint; after the thinking it re-reads it all
    hint_free = _prompts(tok, PromptMode.personal_think)
    followups = hint_free + [p + g.text + "\n</think>\nAnswer:" for p, g in zip(think, first)]
    before = cached.prefix_cache.stats.hit_tokens
    assert cached.generate(followups, greedy) == plain.generate(followups, greedy)
    hits = cached.prefix_cache.stats.hit_tokens - before
    assert hits >= sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in think) // 2
    # scores after a cached prefix, beside rows without one (a bare prompt shares nothing)
    score_prompts = [p + answer_prefix(g.text) for p, g in zip(hint_free, first)] + ["Answer:"]
    continuations = [" 4", " 2", " 5", " 3"]
    before = cached.prefix_cache.stats.hit_tokens
    got, want = cached.score(score_prompts, continuations), plain.score(score_prompts, continuations)
    assert cached.prefix_cache.stats.hit_tokens > before
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_the_cache_is_kept_per_adapter(engines, tmp_path):
    _, cached = engines
    cached.prefix_cache.clear()
    prompt = _prompts(cached.tokenizer, PromptMode.personal_direct)[2]
    cached.generate([prompt], SamplingParams(max_new_tokens=4))
    assert cached.prefix_cache.lookup("student", cached._encode([prompt])[0]) == (0, None)
    assert cached.prefix_cache.lookup(None, cached._encode([prompt])[0])[0] > 0


def test_an_engine_without_the_cache_has_none(engines):
    plain, _ = engines
    assert plain.prefix_cache is None
