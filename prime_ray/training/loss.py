"""The PRIME objective, with its two terms kept apart:

    L = CE(y | direct(x)) + λ · CE(trace ⊕ y | personal-think(x))

Each term is a token mean of the next-token cross-entropy over the completion tokens of its own
sequences. λ = 0 is the fast-thinking baseline.

Normalization (one contract, the one `TrainEngine.train_step` optimizes and logs): each term is the
mean over **all of its tokens in the optimizer step**, across every micro-batch and every data-parallel
rank, as if the step's sequences were one unsharded batch (TRL's `num_items_in_batch`, OpenRLHF's
token-level `aggregate_loss`). A micro-batch therefore contributes

    direct_sum / N_direct + λ · think_sum / N_think

where the N are the step's token counts (`step_token_counts`, all-reduced over ranks), and the sum of
the contributions is the step's loss. A term with no tokens in the step contributes 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prime_ray.training.sequences import IGNORE_INDEX, TERM_IDS


@dataclass(frozen=True)
class TokenCounts:
    """Scored (completion) tokens per term: the normalizers of the two token means."""

    direct: int
    think: int

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(self.direct + other.direct, self.think + other.think)


@dataclass(frozen=True)
class LossTerms:
    """One micro-batch's share of the loss.

    `total` is the scalar that is backpropagated: direct_sum / N_direct + λ · think_sum / N_think
    with the normalizers given to `prime_loss` (float32, 0-dim, on the logits' device). The sums are
    detached float32 scalars (nats); the token counts are this micro-batch's own.
    """

    total: torch.Tensor
    direct_sum: torch.Tensor  # summed token CE of the direct term, nats
    think_sum: torch.Tensor  # summed token CE of the think term, nats
    tokens: TokenCounts

    @property
    def direct(self) -> float:
        """Mean token CE of the direct term in this micro-batch (0.0 without direct tokens)."""
        return float(self.direct_sum) / max(self.tokens.direct, 1)

    @property
    def think(self) -> float:
        """Mean token CE of the think term in this micro-batch (0.0 without think tokens)."""
        return float(self.think_sum) / max(self.tokens.think, 1)


def _scored_masks(labels: torch.Tensor, terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (batch, seq_len - 1) masks of the direct and think targets (labels shifted by one)."""
    targets, target_terms = labels[:, 1:], terms[:, 1:]
    scored = targets != IGNORE_INDEX
    return scored & (target_terms == TERM_IDS["direct"]), scored & (target_terms == TERM_IDS["think"])


def token_counts(labels: torch.Tensor, terms: torch.Tensor) -> TokenCounts:
    """Scored tokens per term of one micro-batch, without a forward pass.

    labels, terms: int64 (batch, seq_len), aligned with the inputs (as `collate_rows` makes them).
    """
    direct, think = _scored_masks(labels, terms)
    return TokenCounts(int(direct.sum()), int(think.sum()))


def prime_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    terms: torch.Tensor,
    think_weight: float,
    normalizer: TokenCounts | None = None,
) -> LossTerms:
    """Next-token CE split by term, normalized by `normalizer`.

    logits: (batch, seq_len, vocab) any float dtype (the CE is computed in float32).
    labels: int64 (batch, seq_len), aligned with the inputs (shifted here); -100 is not scored.
    terms: int64 (batch, seq_len), each token's term id (`TERM_IDS`), read where labels are scored.
    think_weight: λ >= 0.
    normalizer: the token counts each term's sum is divided by; None: this micro-batch's own counts
        (the micro-batch's token means). `TrainEngine.train_step` passes the step's global counts.
    """
    targets = labels[:, 1:]
    logits = logits[:, :-1]
    token_ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)
    direct_mask, think_mask = _scored_masks(labels, terms)
    direct_sum = (token_ce * direct_mask).sum()
    think_sum = (token_ce * think_mask).sum()
    own = TokenCounts(int(direct_mask.sum()), int(think_mask.sum()))
    norm = normalizer if normalizer is not None else own
    total = direct_sum / max(norm.direct, 1) + think_weight * think_sum / max(norm.think, 1)
    return LossTerms(total=total, direct_sum=direct_sum.detach(), think_sum=think_sum.detach(), tokens=own)
