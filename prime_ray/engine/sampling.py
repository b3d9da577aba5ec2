"""Nucleus (top-p) sampling from the largest logits only, as a logits processor for `model.generate`.

transformers' sampling sorts the whole vocabulary for top-p (`TopPLogitsWarper`) and draws from a
vocabulary-wide distribution at every decode step. On a CPU that is most of a step once the model runs
in bfloat16: SmolLM2-135M, batch 32, vocabulary 49,152, 2 cores of an AMD EPYC: the sort 51 ms, the
warper 64 ms and `softmax` + `multinomial` 25 ms per step, against 44 ms for the model's forward.

`nucleus` gets the same kept set and probabilities from the `candidates` largest logits (`torch.topk`,
6 ms there): a token is kept when the probability mass ranked strictly above it is below `top_p`
(the token that crosses `top_p` is kept, as in `TopPLogitsWarper`), and the mass comes from the
vocabulary-wide log-sum-exp, so when the candidates hold at least `top_p` of the mass the result is
exact. A row whose candidates hold less is redone over the whole vocabulary (a flat distribution: rare
at the temperatures traces use), so it is exact for every row.

`NucleusSampling` draws one token per row from that set with `torch.multinomial` (the global RNG: the
engine seeds it per call) and returns scores whose argmax is the drawn token, so `generate` runs in its
greedy mode and every other part of it (EOS, stop strings, padding) works as usual.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

__all__ = ["NucleusSampling", "nucleus"]

DEFAULT_CANDIDATES = 1024  # topk(1024) of 49,152 logits: 6 ms at batch 32 on 2 CPU cores, against 51 ms for a sort


def _check(temperature: float, top_p: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def nucleus(logits: torch.Tensor, temperature: float, top_p: float,
            candidates: int = DEFAULT_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens nucleus sampling may draw and their renormalized probabilities.

    Args:
        logits: [rows, vocab] float32 next-token logits.
        temperature: > 0; the logits are divided by it first.
        top_p: in (0, 1]; the smallest set of most likely tokens holding at least this mass is kept.
        candidates: how many of the largest logits are looked at before the whole vocabulary is.

    Returns:
        (token ids [rows, k] int64, probabilities [rows, k] float32): each row's probabilities sum to 1
        over its kept tokens and are 0 elsewhere; k = min(candidates, vocab), or vocab for a batch with
        a row the candidates could not settle.

    Raises ValueError for a temperature <= 0 or a top_p outside (0, 1].
    Formula: Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", section 3.1.
    """
    _check(temperature, top_p)
    scaled = logits / temperature
    if top_p == 1:  # the whole vocabulary: no ranking needed
        return torch.arange(scaled.shape[-1], device=scaled.device).expand_as(scaled), scaled.softmax(-1)
    log_z = scaled.logsumexp(-1, keepdim=True)
    top, ids = scaled.topk(min(candidates, scaled.shape[-1]), dim=-1)  # sorted, largest first
    probs = (top - log_z).exp()
    if not bool((probs.sum(-1) >= top_p).all()):  # a row whose crossing token is not a candidate
        top, ids = scaled.sort(dim=-1, descending=True)
        probs = (top - log_z).exp()
    above = probs.cumsum(-1) - probs  # the mass ranked strictly above each token
    probs = probs.masked_fill(above >= top_p, 0.0)  # the top token is always kept: nothing ranks above it
    return ids, probs / probs.sum(-1, keepdim=True)


class NucleusSampling(LogitsProcessor):
    """Draws each row's next token by `nucleus` sampling; the returned scores are 0 at the drawn token
    and -inf elsewhere (use with greedy `generate`: its argmax is the draw).

    Input scores: [rows, vocab] float32 logits; output: the same shape and dtype.
    """

    def __init__(self, temperature: float, top_p: float = 1.0, candidates: int = DEFAULT_CANDIDATES):
        _check(temperature, top_p)  # now, not at the first decode step
        self.temperature, self.top_p, self.candidates = temperature, top_p, candidates

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        ids, probs = nucleus(scores, self.temperature, self.top_p, self.candidates)
        drawn = ids.gather(-1, torch.multinomial(probs, 1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, drawn, 0.0)
