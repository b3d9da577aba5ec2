"""The PRIME objective, with its two terms kept apart:

    L = CE(y | direct(x)) + λ · CE(trace ⊕ y | personal-think(x))

Each term is the mean token cross-entropy over the completion tokens of its own sequences in the batch
(a batch may hold both kinds, packed or padded). A term with no tokens in the batch is 0. λ = 0 is the
fast-thinking baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prime_ray.training.collate import IGNORE_INDEX, TERM_IDS


@dataclass(frozen=True)
class LossTerms:
    total: torch.Tensor  # direct + λ·think (what is backpropagated)
    direct: torch.Tensor  # mean token CE of the direct term
    think: torch.Tensor  # mean token CE of the think term
    direct_sum: torch.Tensor  # summed token CE and token counts, to average over many batches exactly
    think_sum: torch.Tensor
    direct_tokens: int
    think_tokens: int


def prime_loss(logits: torch.Tensor, labels: torch.Tensor, terms: torch.Tensor, think_weight: float) -> LossTerms:
    """Next-token CE split by term. `labels` are aligned with the inputs (shifted here)."""
    targets = labels[:, 1:]
    target_terms = terms[:, 1:]
    logits = logits[:, :-1]
    token_ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)
    scored = targets != IGNORE_INDEX
    direct_mask = scored & (target_terms == TERM_IDS["direct"])
    think_mask = scored & (target_terms == TERM_IDS["think"])
    direct_sum = (token_ce * direct_mask).sum()
    think_sum = (token_ce * think_mask).sum()
    direct_tokens = int(direct_mask.sum())
    think_tokens = int(think_mask.sum())
    direct = direct_sum / max(direct_tokens, 1)
    think = think_sum / max(think_tokens, 1)
    return LossTerms(
        total=direct + think_weight * think,
        direct=direct,
        think=think,
        direct_sum=direct_sum.detach(),
        think_sum=think_sum.detach(),
        direct_tokens=direct_tokens,
        think_tokens=think_tokens,
    )
