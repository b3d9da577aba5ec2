"""One optimizer step in plain PyTorch, and the forward pass the DeepSpeed path shares with it.

The Ray Train worker drives a DeepSpeed engine with `forward_terms`; benchmarks and the GPU check use
`train_step` alone, with any torch optimizer, so the two paths compute the same loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from prime_ray.training.collate import Batch
from prime_ray.training.loss import LossTerms, prime_loss


def forward_terms(model, batch: Batch, think_weight: float) -> LossTerms:
    """Forward `batch` through `model` (a PreTrainedModel, a PeftModel or a DeepSpeed engine)."""
    outputs = model(**batch.model_inputs(), use_cache=False)
    return prime_loss(outputs.logits, batch.labels, batch.terms, think_weight)


@dataclass(frozen=True)
class StepStats:
    loss: float  # direct + λ·think over the step's tokens
    direct: float
    think: float
    direct_tokens: int
    think_tokens: int
    tokens: int  # non-padding tokens processed
    padded_tokens: int  # tokens processed including padding
    grad_norm: float
    seconds: float


class TermMeter:
    """Sums token CE and counts per term over many micro-batches: exact means over a window."""

    def __init__(self) -> None:
        self.direct_sum = 0.0
        self.think_sum = 0.0
        self.direct_tokens = 0
        self.think_tokens = 0
        self.tokens = 0
        self.padded_tokens = 0

    def add(self, terms: LossTerms, batch: Batch) -> None:
        self.direct_sum += float(terms.direct_sum)
        self.think_sum += float(terms.think_sum)
        self.direct_tokens += terms.direct_tokens
        self.think_tokens += terms.think_tokens
        self.tokens += batch.tokens
        self.padded_tokens += batch.padded_tokens

    def as_tensor(self) -> torch.Tensor:
        """For an all-reduce across workers (float64 keeps token counts exact)."""
        return torch.tensor(
            [self.direct_sum, self.think_sum, self.direct_tokens, self.think_tokens, self.tokens, self.padded_tokens],
            dtype=torch.float64,
        )

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "TermMeter":
        meter = cls()
        ds, ts, dt, tt, tok, pad = values.tolist()
        meter.direct_sum, meter.think_sum = ds, ts
        meter.direct_tokens, meter.think_tokens, meter.tokens, meter.padded_tokens = int(dt), int(tt), int(tok), int(pad)
        return meter

    @property
    def direct(self) -> float:
        return self.direct_sum / max(self.direct_tokens, 1)

    @property
    def think(self) -> float:
        return self.think_sum / max(self.think_tokens, 1)

    def loss(self, think_weight: float) -> float:
        return self.direct + think_weight * self.think


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Batch],
    *,
    think_weight: float,
    grad_clip: float | None = None,
    scheduler=None,
) -> StepStats:
    """Accumulate gradients over `micro_batches` (each loss divided by their number), clip, step."""
    started = time.perf_counter()
    meter = TermMeter()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for batch in micro_batches:
        terms = forward_terms(model, batch, think_weight)
        (terms.total / len(micro_batches)).backward()
        meter.add(terms, batch)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return StepStats(
        loss=meter.loss(think_weight),
        direct=meter.direct,
        think=meter.think,
        direct_tokens=meter.direct_tokens,
        think_tokens=meter.think_tokens,
        tokens=meter.tokens,
        padded_tokens=meter.padded_tokens,
        grad_norm=float(norm),
        seconds=time.perf_counter() - started,
    )
