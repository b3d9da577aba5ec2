"""The vLLM backend (the `vllm` extra, GPU): the same interface as the transformers backend.

Mapping to the shared semantics:
- sampling: temperature 0 is greedy; `top_k` is off (vLLM's default); each request gets the seed
  `derive_seed(seed, index)`, so repeated prompts in one call give different samples (as in the transformers backend) and the same
  seed and prompts give the same texts;
- stop strings are kept in the text (`include_stop_str_in_output`), as the transformers backend does;
- scoring feeds prompt + continuation token ids and sums the continuation's prompt log-probabilities;
- a LoRA adapter (`adapter_path`, or the named `adapters` a call chooses) is served with a `LoRARequest`
  (no merge);
- vLLM schedules its own batches: `max_batch_size` (the Serve batch size) does not cap them.
vLLM is imported when an engine is built, so the package imports without it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from prime_ray.engine.adapters import check_adapter_dir
from prime_ray.engine.base import Generation, GenerationEngine, SamplingParams, register_engine, require_tokens
from prime_ray.models.loading import load_tokenizer, resolve_model_path
from prime_ray.spec import ModelSpec, derive_seed

__all__ = ["VLLMEngine"]


def _import_vllm():
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise ImportError(
            "the 'vllm' generation backend needs the vllm extra: pip install 'prime-ray[vllm]' "
            f"(on a machine with a GPU), or set generalist.backend: hf ({error})"
        ) from error
    return vllm, LoRARequest


@register_engine("vllm")
class VLLMEngine(GenerationEngine):
    name = "vllm"

    def __init__(
        self,
        *,
        model: ModelSpec,
        device: str = "auto",
        adapter_path: str | None = None,
        adapters: Mapping[str, str | Path] | None = None,
        max_batch_size: int = 16,
        prefix_cache_mib: int = 0,  # noqa: ARG002 - vLLM caches prefixes on its own (in its paged KV blocks)
    ):
        vllm, lora_request_cls = _import_vllm()
        if device not in ("auto", "cuda") and not device.startswith("cuda"):
            raise ValueError(f"the vllm backend runs on CUDA devices, not {device!r}; use backend 'hf'")
        self.tokenizer = load_tokenizer(model)
        dtype = "bfloat16" if model.dtype == "auto" else model.dtype
        # None: the model itself, or `adapter_path`'s adapter; a name: one of `adapters`
        paths: dict[str | None, Path] = {name: check_adapter_dir(path) for name, path in (adapters or {}).items()}
        if adapter_path is not None:
            paths[None] = check_adapter_dir(adapter_path)
        self.adapters = tuple(name for name in paths if name is not None)
        self.lora_requests = {
            name: lora_request_cls(name or "student", i + 1, str(path)) for i, (name, path) in enumerate(paths.items())
        }
        lora_kwargs = {}
        if paths:
            rank = max(int(json.loads((path / "adapter_config.json").read_text())["r"]) for path in paths.values())
            lora_kwargs = {"enable_lora": True, "max_lora_rank": max(rank, 8), "max_loras": len(paths)}
        self.llm = vllm.LLM(
            model=resolve_model_path(model),
            dtype=dtype,
            trust_remote_code=model.trust_remote_code,
            **lora_kwargs,
        )
        self._vllm = vllm

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _lora_request(self, adapter: str | None):
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"unknown adapter {adapter!r}; this engine has {', '.join(self.adapters) or 'none'}")
        return self.lora_requests.get(adapter)

    def generate(self, prompts: list[str], params: SamplingParams, adapter: str | None = None) -> list[Generation]:
        lora_request = self._lora_request(adapter)
        if not prompts:
            return []
        encoded = self._encode(prompts)
        require_tokens(encoded)
        requests = [{"prompt_token_ids": ids} for ids in encoded]
        sampling = [
            self._vllm.SamplingParams(
                n=1,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=None if params.seed is None else derive_seed(params.seed, index),
                stop=list(params.stop) or None,
                include_stop_str_in_output=True,
            )
            for index in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, sampling, lora_request=lora_request, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            results.append(
                Generation(
                    text=completion.text,
                    prompt_tokens=len(out.prompt_token_ids),
                    completion_tokens=len(completion.token_ids),
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                )
            )
        return results

    def score(self, prompts: list[str], continuations: list[str], adapter: str | None = None) -> list[float]:
        lora_request = self._lora_request(adapter)
        if len(prompts) != len(continuations):
            raise ValueError(f"score needs one continuation per prompt: {len(prompts)} prompts, {len(continuations)} continuations")
        if not prompts:
            return []
        heads, tails = self._encode(prompts), self._encode(continuations)
        require_tokens(heads)
        requests = [{"prompt_token_ids": h + t} for h, t in zip(heads, tails)]
        # One generated token is the least vLLM allows; the prompt log-probabilities are what we read.
        sampling = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outputs = self.llm.generate(requests, sampling, lora_request=lora_request, use_tqdm=False)
        scores = []
        for head, tail, out in zip(heads, tails, outputs):
            ids = head + tail
            per_position = out.prompt_logprobs  # [None, {token_id: Logprob}, ...]; position 0 has none
            scores.append(sum(per_position[p][ids[p]].logprob for p in range(len(head), len(ids))))
        return scores

    def close(self) -> None:
        import torch

        del self.llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
