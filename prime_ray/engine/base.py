"""The generation engine interface: batched generation and batched log-likelihood scoring.

Plain Python, no Ray: the Serve deployment wraps an engine, benchmarks and tests use it directly.
Backends register themselves in ENGINES under a name (`hf`, `vllm`).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from prime_ray.spec import ModelSpec


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # same seed, prompts and batch -> same texts
    stop: tuple[str, ...] = ()  # generation of a sequence ends after any of these strings (kept in the text)


@dataclass(frozen=True)
class Generation:
    text: str  # the completion only, without the prompt; cut after a stop string
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]  # stop: EOS or a stop string; length: max_new_tokens reached


class GenerationEngine(abc.ABC):
    """A model that generates and scores batches of prompts.

    `adapters`: the names of the LoRA adapters a call may choose with `adapter=` (None: the model
    itself); a name the engine was not built with raises ValueError.
    """

    name: ClassVar[str]
    adapters: tuple[str, ...] = ()

    @abc.abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams, adapter: str | None = None) -> list[Generation]:
        """One completion per prompt, in order. Prompts are fully rendered text (chat template applied)."""

    @abc.abstractmethod
    def score(self, prompts: list[str], continuations: list[str], adapter: str | None = None) -> list[float]:
        """Sum of log p(continuation tokens | prompt) for each pair, in nats."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Free the model (GPU memory)."""


def require_tokens(encoded: list[list[int]]) -> None:
    """Reject empty prompts: there is nothing to condition on (and no position to predict from)."""
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"empty prompt at index {', '.join(map(str, empty[:10]))}: a prompt needs at least one token")


ENGINES: dict[str, Callable[..., GenerationEngine]] = {}
# The modules that register the built-in backends, imported on first use.
BUILTIN_BACKENDS = {"hf": "prime_ray.engine.hf", "vllm": "prime_ray.engine.vllm"}


def register_engine(name: str):
    def deco(factory):
        ENGINES[name] = factory
        return factory

    return deco


def create_engine(
    model: ModelSpec,
    *,
    backend: str = "hf",
    device: str = "auto",
    adapter_path: str | None = None,
    adapters: Mapping[str, str | Path] | None = None,
    max_batch_size: int = 16,
    prefix_cache_mib: int = 0,
) -> GenerationEngine:
    """Build an engine for `model`, optionally with a PEFT LoRA adapter applied (a trained student) and
    named adapters that each call may choose (`generate(..., adapter=name)`). `prefix_cache_mib`: memory
    for the KV of earlier sequences that later prompts start with (automatic prefix caching; 0: off).

    Raises ValueError for a backend that is neither registered nor a built-in one.
    """
    if backend not in ENGINES and backend in BUILTIN_BACKENDS:
        importlib.import_module(BUILTIN_BACKENDS[backend])  # registers it (imported late: vllm is an extra)
    if backend not in ENGINES:
        known = sorted(set(ENGINES) | set(BUILTIN_BACKENDS))
        raise ValueError(f"unknown generation backend {backend!r}; known: {', '.join(known)}")
    return ENGINES[backend](model=model, device=device, adapter_path=adapter_path, adapters=adapters,
                            max_batch_size=max_batch_size, prefix_cache_mib=prefix_cache_mib)
