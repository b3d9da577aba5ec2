"""Automatic prefix caching for the transformers engine: the KV cache of recent sequences, kept in
blocks of tokens and reused by later calls whose prompts start with the same blocks.

vLLM's automatic prefix caching (`enable_prefix_caching`, its docs' "Automatic Prefix Caching"
design) on a plain LRU of tensors: a sequence's tokens are cut into blocks of `block_size`; block k
is keyed by (the key of block k - 1, its tokens), so a key names the whole prefix up to it and two
sequences share exactly their common leading blocks. A lookup walks a prompt's blocks while they are
cached; an insert stores the blocks not cached yet. Eviction is least recently used, by blocks, and
a hit refreshes a prefix's blocks from its last to its first, so a prefix's tail goes before its head
(a head without its tail is still usable; a tail without its head is not).

Why it pays here: the generalist reads the same prompt several times a job. Trace synthesis renders
a hinted and a hint-free prompt per example that agree up to the hint, and scores after the
hint-free answer's own prompt; the eval asks one example in several modes, whose prompts agree up to
the mode's last instructions, and a forced answer re-reads its prompt and the model's own thinking.

One cache per engine; its calls come one at a time (the Serve replica's queue runs one engine call
at a time), so it takes no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["PrefixCache", "PrefixCacheStats"]


@dataclass
class PrefixCacheStats:
    """Counters since the cache was made: prompt tokens looked up and found, blocks stored and evicted."""

    queried_tokens: int = 0
    hit_tokens: int = 0
    stored_blocks: int = 0
    evicted_blocks: int = 0


@dataclass(frozen=True)
class _Block:
    tokens: tuple[int, ...]
    kv: torch.Tensor  # [layers, 2 (keys, values), kv_heads, block_size, head_dim], the model's dtype


class PrefixCache:
    """Cached KV blocks of token sequences, up to `max_bytes`, per `namespace` (the adapter: KV computed
    with one adapter merged is not another's).

    Args:
        max_bytes: the most bytes of KV kept (blocks past it are evicted, least recently used first).
        block_size: tokens per block; a prefix is reused in whole blocks.
        min_tokens: a shorter cached prefix is not worth its bookkeeping and is reported as no hit.
    """

    def __init__(self, max_bytes: int, *, block_size: int = 16, min_tokens: int = 32):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.min_tokens = min_tokens
        self.stats = PrefixCacheStats()
        self._blocks: OrderedDict[Hashable, _Block] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of KV held now."""
        return self._bytes

    def _keys(self, namespace: Hashable, tokens: Sequence[int], blocks: int) -> list[Hashable]:
        keys: list[Hashable] = []
        key: Hashable = ("prefix", namespace)
        for k in range(blocks):
            key = (key, tuple(tokens[k * self.block_size : (k + 1) * self.block_size]))
            keys.append(hash(key))  # a 64-bit digest; the block's own tokens are checked on a hit
        return keys

    def lookup(self, namespace: Hashable, tokens: Sequence[int]) -> tuple[int, torch.Tensor | None]:
        """The longest cached prefix of `tokens` that leaves at least one token to compute (its logits
        predict what follows).

        Returns (length in tokens, a multiple of `block_size`; its KV `[layers, 2, kv_heads, length,
        head_dim]`), or (0, None) below `min_tokens`.
        """
        self.stats.queried_tokens += len(tokens)
        usable = (len(tokens) - 1) // self.block_size
        found: list[tuple[Hashable, _Block]] = []
        for k, key in enumerate(self._keys(namespace, tokens, usable)):
            block = self._blocks.get(key)
            if block is None or block.tokens != tuple(tokens[k * self.block_size : (k + 1) * self.block_size]):
                break
            found.append((key, block))
        length = len(found) * self.block_size
        if not found or length < self.min_tokens:
            return 0, None
        for key, _ in reversed(found):  # the head most recent: the tail is evicted first
            self._blocks.move_to_end(key)
        self.stats.hit_tokens += length
        return length, torch.cat([block.kv for _, block in found], dim=3)

    def insert(self, namespace: Hashable, tokens: Sequence[int], kv_of: Callable[[int, int], torch.Tensor]) -> None:
        """Keep the whole blocks of `tokens` (a trailing part block is dropped). `kv_of(start, end)` gives
        the KV of positions start..end-1, `[layers, 2, kv_heads, end - start, head_dim]`; it is asked
        only for the blocks not cached yet (those cached are refreshed, not copied)."""
        blocks = len(tokens) // self.block_size
        keys = self._keys(namespace, tokens, blocks)
        missing = [k for k, key in enumerate(keys) if key not in self._blocks]
        if missing:
            start = missing[0] * self.block_size
            kv = kv_of(start, blocks * self.block_size)
            if kv.shape[3] != blocks * self.block_size - start:
                raise ValueError(f"KV of {kv.shape[3]} positions for tokens {start}..{blocks * self.block_size - 1}")
        for k in missing:
            span = slice(k * self.block_size - start, (k + 1) * self.block_size - start)
            block = _Block(tuple(tokens[k * self.block_size : (k + 1) * self.block_size]), kv[:, :, :, span].clone())
            self._blocks[keys[k]] = block
            self._bytes += block.kv.nbytes
            self.stats.stored_blocks += 1
        for key in reversed(keys):
            self._blocks.move_to_end(key)
        while self._bytes > self.max_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self._bytes -= block.kv.nbytes
            self.stats.evicted_blocks += 1

    def clear(self) -> None:
        self._blocks.clear()
        self._bytes = 0
