"""Nucleus sampling from the largest logits: the same kept set and probabilities as transformers'
`TopPLogitsWarper`, and draws that follow them."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from transformers import LogitsProcessorList, TopPLogitsWarper

from prime_ray.engine.sampling import NucleusSampling, nucleus


def _dense(ids: torch.Tensor, probs: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.zeros(ids.shape[0], vocab).scatter_(-1, ids, probs)


def _reference(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """transformers' sampling distribution: temperature, then its top-p warper, then softmax."""
    warped = LogitsProcessorList([TopPLogitsWarper(top_p)])(None, logits / temperature)
    return warped.softmax(-1)


@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.95), (1.0, 0.5), (1.3, 0.999), (0.2, 0.9), (1.0, 1.0)])
@pytest.mark.parametrize("candidates", [4, 64, 100_000])
def test_nucleus_equals_transformers_top_p(temperature, top_p, candidates):
    torch.manual_seed(0)
    peaked = torch.randn(6, 500) * 4  # the candidates usually hold the nucleus
    flat = torch.randn(2, 500) * 0.1  # they do not: the whole vocabulary is ranked
    logits = torch.cat([peaked, flat])
    ids, probs = nucleus(logits, temperature, top_p, candidates)
    assert torch.allclose(_dense(ids, probs, 500), _reference(logits, temperature, top_p), atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(8))


def test_nucleus_keeps_the_top_token_and_the_one_that_crosses_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    ids, probs = nucleus(logits, 1.0, 0.8, candidates=2)  # 0.5 + 0.3 reaches 0.8: the third is dropped
    assert ids[0, :2].tolist() == [0, 1] and probs[0, :2].tolist() == pytest.approx([0.625, 0.375])
    assert probs[0, 2:].sum() == 0
    ids, probs = nucleus(logits, 1.0, 0.1)  # the top token alone holds more than 0.1
    assert _dense(ids, probs, 4)[0].tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("temperature, top_p", [(0.0, 0.9), (-1.0, 0.9), (1.0, 0.0), (1.0, 1.5)])
def test_nucleus_rejects_bad_parameters(temperature, top_p):
    with pytest.raises(ValueError, match="temperature|top_p"):
        nucleus(torch.zeros(1, 3), temperature, top_p)
    with pytest.raises(ValueError, match="temperature|top_p"):
        NucleusSampling(temperature, top_p)  # at construction, before any step


def test_draws_follow_the_nucleus_distribution():
    torch.manual_seed(1)
    logits = torch.randn(1, 12) * 2
    expected = _reference(logits, 0.7, 0.9)[0]
    sampler = NucleusSampling(0.7, 0.9, candidates=3)
    draws = torch.stack([sampler(None, logits.clone()).argmax(-1)[0] for _ in range(4000)])
    observed = torch.bincount(draws, minlength=12)
    kept = expected > 0
    assert observed[~kept].sum() == 0  # nothing outside the nucleus is ever drawn
    # the counts fit the nucleus probabilities (chi-square goodness of fit, seeded: not flaky)
    p = expected[kept].double()
    result = stats.chisquare(observed[kept].double().numpy(), (4000 * p / p.sum()).numpy())
    assert result.pvalue > 0.01


def test_scores_mark_one_drawn_token_per_row():
    scores = NucleusSampling(1.0, 0.95)(None, torch.randn(5, 40))
    assert (scores == 0).sum(-1).tolist() == [1] * 5
    assert torch.isinf(scores).sum() == 5 * 39 and scores.dtype == torch.float32
