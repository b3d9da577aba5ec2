"""The transformers backend: batched generation with a KV cache, and batched log-likelihood scoring.

- Generation left-pads each chunk of at most `max_batch_size` prompts (sorted by length, so a chunk
  holds prompts of similar length) and calls `model.generate` with the static KV cache
  (`fast_generation_kwargs`). Temperature 0 is
  greedy; otherwise sampling with `temperature`/`top_p` (no top-k), seeded once per call from
  `params.seed` inside a forked RNG, so the same seed, prompts and batch give the same texts and the
  caller's global RNG is left alone.
- A sequence ends at EOS or at a stop string; its text is cut right after the first stop string.
- Scoring right-pads prompt + continuation, computes logits only at the positions that predict a
  continuation token, and sums the continuation tokens' log-probabilities.
- Prompts are already rendered with the chat template: they are tokenized without special tokens.
- `adapter_path` merges one LoRA adapter for good (a student served alone); `adapters` are named LoRA
  adapters a call chooses (`adapter=`), merged in place before it (`MergedAdapters`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import LogitsProcessorList

from prime_ray.engine.adapters import MergedAdapters, check_adapter_dir
from prime_ray.engine.base import Generation, GenerationEngine, SamplingParams, register_engine, require_tokens
from prime_ray.engine.sampling import NucleusSampling
from prime_ray.models.loading import load_model
from prime_ray.spec import ModelSpec

__all__ = ["HFEngine", "resolve_device"]


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
    for start in range(0, len(order), size):
        yield order[start : start + size]


@register_engine("hf")
class HFEngine(GenerationEngine):
    """A Hugging Face causal LM, optionally with a PEFT LoRA adapter merged in and named adapters to choose per call."""

    name = "hf"

    def __init__(
        self,
        *,
        model: ModelSpec,
        device: str = "auto",
        adapter_path: str | None = None,
        adapters: Mapping[str, str | Path] | None = None,
        max_batch_size: int = 16,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.device = resolve_device(device)
        self.model_spec = model
        self.max_batch_size = max_batch_size
        self.model, self.tokenizer = load_model(model, device=self.device)
        if adapter_path is not None:
            self.model = _apply_adapter(self.model, adapter_path)
        self._adapters = MergedAdapters(self.model, adapters) if adapters else None
        self.adapters = self._adapters.names if self._adapters else ()
        self.eos_token_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_token_id = self.tokenizer.pad_token_id

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

    def _finish(self, prompt_len: int, new_ids: list[int], params: SamplingParams) -> Generation:
        """Text, token count and finish reason of one generated row (padding after its end dropped)."""
        eos = set(self.eos_token_ids)
        end = next((i + 1 for i, t in enumerate(new_ids) if t in eos), None)
        if end is None:  # a row stopped by a stop string is padded while the others go on
            end = len(new_ids)
            while end and new_ids[end - 1] == self.pad_token_id:
                end -= 1
            ids, hit_eos = new_ids[:end], False
        else:
            ids, hit_eos = new_ids[:end], True
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
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        kwargs = self._generation_kwargs(params)
        results: dict[int, Generation] = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for chunk in _chunks(order, self.max_batch_size):
                ids, mask = self._left_pad([encoded[i] for i in chunk])
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
                new = out[:, ids.shape[1] :].tolist()
                for row, index in enumerate(chunk):
                    results[index] = self._finish(len(encoded[index]), new[row], params)
        return [results[i] for i in range(len(prompts))]  # every index is in one chunk

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
        order = sorted(range(len(prompts)), key=lambda i: len(heads[i]) + len(tails[i]))
        scores = [0.0] * len(prompts)
        for chunk in _chunks(order, self.max_batch_size):
            chunk = [i for i in chunk if tails[i]]  # an empty continuation has log-likelihood 0
            if chunk:
                for index, value in zip(chunk, self._score_chunk([heads[i] for i in chunk], [tails[i] for i in chunk])):
                    scores[index] = value
        return scores

    def _score_chunk(self, heads: list[list[int]], tails: list[list[int]]) -> list[float]:
        rows = [h + t for h, t in zip(heads, tails)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding: positions are the natural 0..n-1
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        # Logits only at the positions that predict a continuation token (position p predicts token
        # p + 1): the union over the chunk's rows, not the span from the shortest prompt to the longest
        # row, whose vocabulary-wide logits cost as much as a slice of the forward pass itself.
        row_of = torch.tensor([i for i, t in enumerate(tails) for _ in t])
        position = torch.tensor([len(h) - 1 + j for h, t in zip(heads, tails) for j in range(len(t))])
        keep = torch.unique(position)  # sorted
        logits = self.model(  # no KV cache: one forward pass needs none (7 % faster, 48 prompts of 340 tokens)
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), logits_to_keep=keep.to(self.device),
            use_cache=False,
        ).logits  # [rows, len(keep), vocab]
        picked = logits[row_of.to(self.device), torch.searchsorted(keep, position).to(self.device)].float()
        targets = torch.tensor([token for t in tails for token in t], device=self.device)
        token_lp = torch.log_softmax(picked, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sums = torch.zeros(len(rows), device=self.device, dtype=token_lp.dtype)
        return sums.index_add_(0, row_of.to(self.device), token_lp).tolist()

    def close(self) -> None:
        del self.model
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _apply_adapter(model, adapter_path: str):
    """Merge a PEFT LoRA adapter into the base weights (faster generation than an unmerged adapter)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(check_adapter_dir(adapter_path))).merge_and_unload().eval()
