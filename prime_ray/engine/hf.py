"""The transformers backend: batched generation with a KV cache, and batched log-likelihood scoring.

- Generation left-pads each chunk of at most `max_batch_size` prompts (sorted by the tokens left to
  compute, so a chunk holds prompts of similar cost; as few chunks as fit, of equal sizes) and calls
  `model.generate` with the static KV cache (`fast_generation_kwargs`). Temperature 0 is
  greedy; otherwise sampling with `temperature`/`top_p` (no top-k), seeded once per call from
  `params.seed` inside a forked RNG, so the same seed, prompts, batch and prefix-cache hits give the
  same texts and the caller's global RNG is left alone.
- Automatic prefix caching (`prefix_cache_mib` > 0, `engine/prefix_cache.py`): every generated
  sequence's KV is kept in blocks; a later prompt (generated or scored) that starts with cached blocks
  computes only the rest, on its prefix's KV.
- A sequence ends at EOS or at a stop string; its text is cut right after the first stop string.
- Scoring right-pads prompt + continuation, computes logits only at the positions that predict a
  continuation token, and sums the continuation tokens' log-probabilities. Rows of a call that share
  a long prompt prefix (`shared_prefix_groups`: trace synthesis scores the gold answer alone and
  after each trace, under one prompt) get it computed once: the prefixes in one forward pass with
  the KV cache kept, then each row's own tokens on its group's cache (48 such pairs of 284 tokens:
  8.5 s against 15.8 s, SmolLM2-135M in bfloat16 on 2 CPU cores).
- Prompts are already rendered with the chat template: they are tokenized without special tokens.
- `adapter_path` merges one LoRA adapter for good (a student served alone); `adapters` are named LoRA
  adapters a call chooses (`adapter=`), merged in place before it (`MergedAdapters`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from transformers import DynamicCache, LogitsProcessorList, StaticCache

from prime_ray.engine.adapters import MergedAdapters, check_adapter_dir
from prime_ray.engine.base import Generation, GenerationEngine, SamplingParams, register_engine, require_tokens
from prime_ray.engine.prefix_cache import PrefixCache
from prime_ray.engine.sampling import NucleusSampling
from prime_ray.models.loading import load_model
from prime_ray.spec import ModelSpec

__all__ = ["HFEngine", "resolve_device", "shared_prefix_groups"]
T = TypeVar("T")


def resolve_device(device: str) -> str:
    """`auto` is CUDA when available, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _chunks(order: list[int], size: int):
    """`order` in as few runs of at most `size` as possible, of equal sizes (within one).

    Rows come sorted by prompt length, so equal runs keep like rows together where a full run and a
    remainder would not: 28 eval think rows at size 16 go as 14 think + 14 personal-think, and the
    14 short-prompt rows, which end their thinking after ~25 tokens, stop early instead of decoding
    all 96 steps beside two long-prompt rows. A decode step costs about the same at 12 and 16 rows.
    """
    if not order:
        return
    count = -(-len(order) // size)
    base, extra = divmod(len(order), count)
    start = 0
    for i in range(count):
        end = start + base + (i < extra)
        yield order[start:end]
        start = end


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def shared_prefix_groups(heads: list[list[int]], max_group: int, min_shared: int) -> list[tuple[int, list[int]]]:
    """Rows grouped by a common leading run of prompt tokens, to be computed once per group.

    Returns (p, row indices) per group: its rows share their first p tokens, p leaves every row at least
    one token of its own (the last prompt token predicts the continuation), and p = 0 for a row that
    shares nothing worth a second forward pass. Rows are taken in lexicographic order (rows with a long
    common prefix are neighbours); a row joins the current group while the tokens it saves (the new,
    possibly shorter p) outweigh what the shorter p costs the rows already there, p >= `min_shared`,
    and the group has fewer than `max_group` rows.
    """
    groups: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(heads)), key=lambda i: heads[i]):
        if groups:
            p, rows = groups[-1]
            q = min(p, _lcp(heads[rows[0]], heads[i]), len(heads[i]) - 1)
            if len(rows) < max_group and q >= min_shared and q > len(rows) * (p - q):
                groups[-1] = (q, [*rows, i])
                continue
        groups.append((len(heads[i]) - 1, [i]))
    return [(p if len(rows) > 1 else 0, rows) for p, rows in groups]


def _group_chunks(groups: list[tuple[int, list[int]]], size: int):
    """Whole groups, at most `size` rows per chunk (a group has at most `size` rows)."""
    chunk: list[tuple[int, list[int]]] = []
    for group in groups:
        if chunk and sum(len(rows) for _, rows in chunk) + len(group[1]) > size:
            yield chunk
            chunk = []
        chunk.append(group)
    if chunk:
        yield chunk


def _split_by_length(items: list[T], length: Callable[[T], int]) -> list[list[T]]:
    """`items` (sorted by `length`) as one batch, or two where that pads fewer tokens."""
    n = len(items)
    best, cut = n * length(items[-1]), n
    for k in range(1, n):
        cost = k * length(items[k - 1]) + (n - k) * length(items[-1])
        if cost < best:
            best, cut = cost, k
    return [items[:cut], items[cut:]] if cut < n else [items]


def _stack_prefixes(cached: list[tuple[int, torch.Tensor | None]],
                    width: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per-row cached prefixes (length, KV `[layers, 2, kv_heads, length, head_dim]`; length 0: none) as
    one left-padded batch: keys and values per layer `[rows, kv_heads, width, head_dim]`, and the
    attention mask `[rows, width]` (long, 1 on the cached positions)."""
    first = next(kv for _, kv in cached if kv is not None)
    layers, _, heads, _, dim = first.shape
    stacked = first.new_zeros((layers, 2, len(cached), heads, width, dim))
    mask = torch.zeros((len(cached), width), dtype=torch.long)
    for r, (length, kv) in enumerate(cached):
        if kv is not None:
            stacked[:, :, r, :, width - length :] = kv
            mask[r, width - length :] = 1
    return list(stacked[:, 0]), list(stacked[:, 1]), mask


@register_engine("hf")
class HFEngine(GenerationEngine):
    """A Hugging Face causal LM, optionally with a PEFT LoRA adapter merged in and named adapters to choose per call."""

    name = "hf"
    # Rows of a score call that share at least this many prompt tokens get them computed once (a
    # shorter common prefix saves less than a second forward pass costs).
    min_shared_prefix = 32

    def __init__(
        self,
        *,
        model: ModelSpec,
        device: str = "auto",
        adapter_path: str | None = None,
        adapters: Mapping[str, str | Path] | None = None,
        max_batch_size: int = 16,
        prefix_cache_mib: int = 0,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.device = resolve_device(device)
        self.model_spec = model
        self.max_batch_size = max_batch_size
        self.model, self.tokenizer = load_model(model, device=self.device)
        if adapter_path is not None:
            self.model = _apply_adapter(self.model, adapter_path)
        _contiguous_head_input(self.model)
        self._adapters = MergedAdapters(self.model, adapters) if adapters else None
        self.adapters = self._adapters.names if self._adapters else ()
        self.eos_token_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_token_id = self.tokenizer.pad_token_id
        # Automatic prefix caching: the KV of generated sequences, for later calls' prompts that start the same
        self.prefix_cache = (PrefixCache(prefix_cache_mib << 20, min_tokens=self.min_shared_prefix)
                             if prefix_cache_mib > 0 and self._can_share_prefixes else None)

    # ------------------------------------------------------------------------------- generate

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generation_kwargs(self, params: SamplingParams) -> dict:
        kwargs: dict = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
        }
        # Greedy `generate`; at a temperature, `NucleusSampling` draws the token its argmax then takes
        # (transformers' top-p sorts the whole vocabulary at every step: 2.5x slower decoding on CPU).
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.temperature > 0:
            kwargs["logits_processor"] = LogitsProcessorList([NucleusSampling(params.temperature, params.top_p)])
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kwargs | self.fast_generation_kwargs()

    def fast_generation_kwargs(self) -> dict:
        """The fastest `model.generate` settings measured for this device (benchmarks/README.md).

        The static KV cache: preallocated once per call, it replaces the dynamic cache's `torch.cat`
        of every layer's keys and values at every step. On CUDA its fixed shapes also let transformers
        compile the decode step (the field notes: 2.9x at batch 512 for this model size on an H200); on
        CPU it is not compiled and still measured about 2x the dynamic cache (SmolLM2-135M, batch 8).
        """
        return {"cache_implementation": "static"}

    def _generated_length(self, new_ids: list[int]) -> tuple[int, bool]:
        """How many of a row's generated ids are its own (through its EOS, or up to the padding that
        follows a row stopped by a stop string while the others go on), and whether it ended on EOS."""
        eos = set(self.eos_token_ids)
        end = next((i + 1 for i, t in enumerate(new_ids) if t in eos), None)
        if end is not None:
            return end, True
        end = len(new_ids)
        while end and new_ids[end - 1] == self.pad_token_id:
            end -= 1
        return end, False

    def _finish(self, prompt_len: int, new_ids: list[int], params: SamplingParams) -> Generation:
        """Text, token count and finish reason of one generated row (padding after its end dropped)."""
        end, hit_eos = self._generated_length(new_ids)
        ids = new_ids[:end]
        text = self._decode(ids)
        cut = min((text.find(s) + len(s) for s in params.stop if s in text), default=None)
        if cut is not None:
            text = text[:cut]
            ids = ids[: self._tokens_covering(ids, text)]
        stopped = hit_eos or cut is not None or len(ids) < params.max_new_tokens
        return Generation(
            text=text, prompt_tokens=prompt_len, completion_tokens=len(ids), finish_reason="stop" if stopped else "length"
        )

    def _decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text  # type: ignore[return-value]  # one sequence decodes to a str; the hint covers batches too

    def _tokens_covering(self, ids: list[int], text: str) -> int:
        """The fewest leading tokens of `ids` whose decoding contains `text` (binary search)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._decode(ids[:mid])) >= len(text):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _activate(self, adapter: str | None) -> None:
        if self._adapters is not None:
            self._adapters.activate(adapter)
        elif adapter is not None:
            raise ValueError(f"unknown adapter {adapter!r}: this engine was built without named adapters")

    @torch.inference_mode()
    def generate(self, prompts: list[str], params: SamplingParams, adapter: str | None = None) -> list[Generation]:
        self._activate(adapter)
        if not prompts:
            return []
        encoded = self._encode(prompts)
        require_tokens(encoded)
        cached = [self._cached_prefix(ids, adapter) for ids in encoded]
        # by the tokens left to compute, then by length: a chunk holds rows of like cost
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]) - cached[i][0], len(encoded[i])))
        kwargs = self._generation_kwargs(params)
        results: dict[int, Generation] = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for chunk in _chunks(order, self.max_batch_size):
                rows = [encoded[i] for i in chunk]
                new = self._generate_rows(rows, [cached[i] for i in chunk], kwargs, adapter)
                for row, index in enumerate(chunk):
                    results[index] = self._finish(len(encoded[index]), new[row], params)
        return [results[i] for i in range(len(prompts))]  # every index is in one chunk

    def _cached_prefix(self, ids: list[int], adapter: str | None) -> tuple[int, torch.Tensor | None]:
        return self.prefix_cache.lookup(adapter, ids) if self.prefix_cache is not None else (0, None)

    def _generate_rows(self, rows: list[list[int]], cached: list[tuple[int, torch.Tensor | None]], kwargs: dict,
                       adapter: str | None) -> list[list[int]]:
        """`model.generate` on one chunk; the generated ids per row (padded to the longest).

        Rows with a cached prefix (`cached`: its length and KV per row) compute only the rest of their
        prompt: the prefixes, left-padded to the longest, fill the first positions of the static KV cache,
        and the rest of each prompt follows, left-padded too, so every row's last prompt token is the last
        input column. The padding between a short prefix and its rest is masked, and the position ids
        `generate` derives from the attention mask skip it. The chunk's sequences then go to the cache.
        """
        width = max(length for length, _ in cached)
        ids, mask = self._left_pad([row[length:] for row, (length, _) in zip(rows, cached)])
        call = dict(kwargs)
        if width:
            keys, values, past_mask = _stack_prefixes(cached, width)
            cache = StaticCache(config=self.model.config.get_text_config(decoder=True), max_cache_len=width + ids.shape[1] + kwargs["max_new_tokens"])
            for layer, (k, v) in enumerate(zip(keys, values)):
                cache.update(k, v, layer)
            prefix_ids, _ = self._left_pad([row[:length] for row, (length, _) in zip(rows, cached)])
            ids = torch.cat([prefix_ids, ids], 1)
            mask = torch.cat([past_mask.to(self.device), mask], 1)
            call.pop("cache_implementation", None)
            call["cache"] = cache
        out = self.model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, **call)
        new = out.sequences[:, ids.shape[1] :].tolist()
        if self.prefix_cache is not None:
            self._keep_prefixes(rows, new, mask, out.cache, adapter)
        return new

    def _keep_prefixes(self, rows: list[list[int]], new: list[list[int]], mask: torch.Tensor, cache,
                       adapter: str | None) -> None:
        """Each row's prompt and generated tokens, with their KV from the call's cache, into the prefix
        cache. The last generated token was never fed back, so it has no KV and is left out."""
        assert self.prefix_cache is not None
        layers = cache.layers
        width = mask.shape[1]
        for r, (prompt, generated) in enumerate(zip(rows, new)):
            fed = max(self._generated_length(generated)[0] - 1, 0)
            positions = torch.cat([mask[r].nonzero().squeeze(1), torch.arange(width, width + fed, device=mask.device)])

            def kv_of(start: int, end: int, r: int = r, positions: torch.Tensor = positions) -> torch.Tensor:
                at = positions[start:end]
                return torch.stack([torch.stack((layer.keys[r][:, at], layer.values[r][:, at])) for layer in layers])

            self.prefix_cache.insert(adapter, prompt + generated[:fed], kv_of)

    # ---------------------------------------------------------------------------------- score

    @torch.inference_mode()
    def score(self, prompts: list[str], continuations: list[str], adapter: str | None = None) -> list[float]:
        self._activate(adapter)
        if len(prompts) != len(continuations):
            raise ValueError(f"score needs one continuation per prompt: {len(prompts)} prompts, {len(continuations)} continuations")
        if not prompts:
            return []
        # Separate tokenization keeps the prompt's tokens exactly as generation sees them.
        heads, tails = self._encode(prompts), self._encode(continuations)
        require_tokens(heads)  # the first continuation token needs a prompt token to be predicted from
        scores = [0.0] * len(prompts)  # an empty continuation has log-likelihood 0
        scored = [i for i in range(len(prompts)) if tails[i]]
        cached = {i: hit for i in scored if (hit := self._cached_prefix(heads[i], adapter))[0]}
        for index, value in self._score_cached(cached, heads, tails).items():
            scores[index] = value
        scored = [i for i in scored if i not in cached]
        if self._can_share_prefixes:
            groups = shared_prefix_groups([heads[i] for i in scored], self.max_batch_size, self.min_shared_prefix)
        else:
            groups = [(0, [r]) for r in range(len(scored))]
        shared = [(p, [scored[r] for r in rows]) for p, rows in groups if p]
        alone = sorted((scored[r] for p, rows in groups if not p for r in rows), key=lambda i: len(heads[i]) + len(tails[i]))
        for chunk in _chunks(alone, self.max_batch_size):
            rows = [heads[i] + tails[i] for i in chunk]
            starts = [len(heads[i]) for i in chunk]
            for index, value in zip(chunk, self._score_rows(rows, starts, [tails[i] for i in chunk])):
                scores[index] = value
        for chunk in _group_chunks(shared, self.max_batch_size):
            for index, value in self._score_shared(chunk, heads, tails).items():
                scores[index] = value
        return scores

    @property
    def _can_share_prefixes(self) -> bool:
        """A computed prefix can be reused by every row only if every layer attends to the whole past
        (no sliding window, whose cache keeps only the window)."""
        config = self.model.config.get_text_config(decoder=True)
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        return not getattr(config, "sliding_window", None) and layer_types == {"full_attention"}

    def _score_shared(self, groups: list[tuple[int, list[int]]], heads: list[list[int]],
                      tails: list[list[int]]) -> dict[int, float]:
        """Score rows that share their first `p` prompt tokens per group: the prefixes in one forward pass
        (left-padded, KV cache kept), then each row's rest of prompt + continuation on its group's cache.
        The suffixes go in up to two batches split by length (a likelihood baseline's few tokens are
        not padded to a trace's hundred)."""
        prefixes = [heads[rows[0]][:p] for p, rows in groups]
        ids, mask = self._left_pad(prefixes)
        prefix = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            use_cache=True, logits_to_keep=1).cache
        layers = [(keys, values) for keys, values, *_ in prefix]
        members = [(g, index) for g, (_, rows) in enumerate(groups) for index in rows]

        def own_tokens(member: tuple[int, int]) -> int:  # what a row feeds after its group's prefix
            g, index = member
            return len(heads[index]) - groups[g][0] + len(tails[index])

        members.sort(key=own_tokens)
        out: dict[int, float] = {}
        for batch in _split_by_length(members, own_tokens):
            group_of = torch.tensor([g for g, _ in batch], device=self.device)
            cache = DynamicCache(ddp_cache_data=[(k[group_of], v[group_of]) for k, v in layers], config=self.model.config)
            lengths = [groups[g][0] for g, _ in batch]
            values = self._score_rows(
                [heads[i][groups[g][0]:] + tails[i] for g, i in batch],
                [len(heads[i]) - groups[g][0] for g, i in batch],
                [tails[i] for _, i in batch],
                past=(cache, mask[group_of], torch.tensor(lengths, device=self.device)),
            )
            out.update(zip((i for _, i in batch), values))
        return out

    def _score_cached(self, cached: dict[int, tuple[int, torch.Tensor | None]],
                      heads: list[list[int]], tails: list[list[int]]) -> dict[int, float]:
        """Score the rows whose prompt starts with a cached prefix (`cached`: row -> its length and KV),
        each row's rest of prompt + continuation on its own prefix's KV, in chunks of like cost."""

        def own_tokens(i: int) -> int:  # what a row computes after its cached prefix
            return len(heads[i]) - cached[i][0] + len(tails[i])

        out: dict[int, float] = {}
        for chunk in _chunks(sorted(cached, key=own_tokens), self.max_batch_size):
            for batch in _split_by_length(chunk, own_tokens):
                hits = [cached[i] for i in batch]
                width = max(length for length, _ in hits)
                keys, values, past_mask = _stack_prefixes(hits, width)
                cache = DynamicCache(ddp_cache_data=[(k.to(self.device), v.to(self.device)) for k, v in zip(keys, values)],
                                     config=self.model.config)
                values_ = self._score_rows(
                    [heads[i][length:] + tails[i] for i, (length, _) in zip(batch, hits)],
                    [len(heads[i]) - length for i, (length, _) in zip(batch, hits)],
                    [tails[i] for i in batch],
                    past=(cache, past_mask.to(self.device), torch.tensor([length for length, _ in hits], device=self.device)),
                )
                out.update(zip(batch, values_))
        return out

    def _score_rows(self, rows: list[list[int]], starts: list[int], tails: list[list[int]],
                    past: tuple[DynamicCache, torch.Tensor, torch.Tensor] | None = None) -> list[float]:
        """Sum of log p(tails[i]) for rows[i] = (prompt tokens) + tails[i], whose continuation starts at
        index starts[i]. With `past` = (cache, its attention mask [rows, past_len], each row's real prefix
        length), the rows continue prefixes already in the cache."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding: positions are the natural 0..n-1 after any prefix
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        # Logits only at the positions that predict a continuation token (position p predicts token
        # p + 1): the union over the rows, not the span from the shortest prompt to the longest row,
        # whose vocabulary-wide logits cost as much as a slice of the forward pass itself.
        row_of = torch.tensor([i for i, t in enumerate(tails) for _ in t])
        position = torch.tensor([start - 1 + j for start, t in zip(starts, tails) for j in range(len(t))])
        keep = torch.unique(position)  # sorted
        kwargs: dict = {"use_cache": False}  # one forward pass needs no KV cache (7 % faster, 48 prompts of 340 tokens)
        ids, mask = ids.to(self.device), mask.to(self.device)
        if past is not None:
            cache, past_mask, lengths = past
            kwargs = {"use_cache": True, "cache": cache,
                      "position_ids": lengths[:, None] + torch.arange(width, device=self.device)}
            mask = torch.cat([past_mask, mask], dim=1)
        logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep.to(self.device), **kwargs).logits
        picked = logits[row_of.to(self.device), torch.searchsorted(keep, position).to(self.device)].float()
        targets = torch.tensor([token for t in tails for token in t], device=self.device)
        token_lp = torch.log_softmax(picked, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sums = torch.zeros(len(rows), device=self.device, dtype=token_lp.dtype)
        return sums.index_add_(0, row_of.to(self.device), token_lp).tolist()

    def close(self) -> None:
        del self.model
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _contiguous_head_input(model) -> None:
    """Feed the output projection (`lm_head`) a contiguous input.

    A prefill asks for the logits of the last position only (`generate` passes `logits_to_keep=1`),
    so the model projects `hidden_states[:, -1:, :]`, a strided view `[rows, 1, hidden]`. A bias-free
    `nn.Linear` hands that to `torch.matmul`, which cannot fold the view into one matrix product and
    goes through `bmm`; on CPU, `bmm` copies the broadcast `[hidden, vocab]` weight once per row
    (pytorch/pytorch#151934). For SmolLM2-135M in bfloat16 that is 57 MB per row: about 0.9 GB written
    per prefill of 16 rows, and a 32-row prefill took 11-12 s with it against 7.4-7.6 s without it on 2
    cores of an AMD EPYC (Zen 4). Copying the `[rows, 1, hidden]` input instead costs nothing.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))


def _apply_adapter(model, adapter_path: str):
    """Merge a PEFT LoRA adapter into the base weights (faster generation than an unmerged adapter)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(check_adapter_dir(adapter_path))).merge_and_unload().eval()
