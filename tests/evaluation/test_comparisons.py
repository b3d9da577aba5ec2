"""Paired differences and the claims' verdicts, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from prime_ray.evaluation.comparisons import claims, paired_comparisons, paired_difference
from prime_ray.evaluation.metrics import mean_interval


def test_paired_bootstrap_on_two_pairs_spans_both_outcomes():
    # differences [0, 1]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4 -> [0, 1]
    d = paired_difference([5.0, 3.0], [5.0, 2.0], n_resamples=1000, seed=0)
    assert (d.value, d.low, d.high) == (0.5, 0.0, 1.0)


def test_paired_bootstrap_quantiles_by_hand():
    # differences [1, 1, 1, 0]: a resample's mean is k/4, k ~ Binomial(4, 3/4). P(k = 0) = 1/256 < 2.5 %
    # <= P(k <= 1) = 13/256 (5.1 %), so the 2.5th percentile is 0.25; P(k = 4) = 81/256 > 2.5 %: the 97.5th is 1.
    d = paired_difference([2.0, 7.0, 4.0, 9.0], [1.0, 6.0, 3.0, 9.0], n_resamples=2000, seed=3)
    assert (d.value, d.low, d.high) == (0.75, 0.25, 1.0)


def test_pairing_removes_the_spread_the_examples_share():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 10, size=40)  # example difficulty, common to both modes
    a, b = shared + 1.0 + rng.normal(0, 0.1, size=40), shared
    d = paired_difference(a, b, n_resamples=1000, seed=0)
    assert 0.9 < d.low < 1.0 < d.high < 1.1
    marginal_a, marginal_b = (mean_interval(x, n_resamples=1000, seed=0) for x in (a, b))
    assert marginal_a.low < marginal_b.high  # the separate intervals overlap: they cannot tell the modes apart


def test_paired_difference_edge_cases():
    assert paired_difference([], [], n_resamples=100, seed=0).value is None
    one = paired_difference([3.0], [1.0], n_resamples=100, seed=0)
    assert (one.value, one.low, one.high) == (2.0, None, None)
    assert paired_difference([1.0, 2.0], [0.0, 0.0], n_resamples=0, seed=0).low is None
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 2.0], n_resamples=10, seed=0)


def _scores(**modes: list[float]) -> dict[str, dict[str, float]]:
    return {mode.replace("_", "-"): {f"e{i}": v for i, v in enumerate(values)} for mode, values in modes.items()}


def _verdicts(scores, lower_is_better=True):
    values = {m: float(np.mean(list(s.values()))) for m, s in scores.items()}
    return [c.verdict for c in claims("test_query", scores, values, metric="mae", lower_is_better=lower_is_better,
                                      n_resamples=500, seed=0)]


def test_each_verdict_on_outcomes_where_it_is_known():
    # MAE per example (lower is better), 20 examples
    scores = _scores(
        generalist_direct=[1.0, 0.0] * 10,  # mean 0.5: the best non-PRIME mode
        generalist_think=[2.0] * 20,  # worse than direct on every example: claim 1 shown
        fast_direct=[3.0] * 20,
        fast_personal_direct=[2.5] * 20,  # the fast student's best direct mode
        fast_think=[1.0] * 20,  # better than its best direct mode everywhere: claim 2 reversed
        prime_personal_think=[0.0, 1.0] * 10,  # vs generalist-direct: +1, −1, ... mean 0: claim 3 not shown
    )
    assert _verdicts(scores) == ["shown", "reversed", "not shown at this size"]
    found = claims("test_query", scores, {m: float(np.mean(list(s.values()))) for m, s in scores.items()},
                   metric="mae", lower_is_better=True, n_resamples=500, seed=0)
    assert found[1].expected_better == "fast-personal-direct" and found[1].comparison.n == 20
    assert found[2].comparison.b == "generalist-direct"
    assert (found[0].comparison.difference.value, found[0].comparison.favours) == (-1.5, "generalist-direct")


def test_prime_shown_best_and_missing_modes_not_evaluated():
    scores = _scores(generalist_direct=[1.0] * 8, generalist_think=[1.0] * 8, prime_personal_think=[0.0, 1.0, 0.0, 0.0] * 2)
    # claim 1: equal everywhere: zero-width interval at 0, not shown; claim 2: no fast student
    # claim 3: prime − generalist-direct = [−1, 0, −1, −1] x 2, every resample's mean < 0: shown
    assert _verdicts(scores) == ["not shown at this size", "not evaluated", "shown"]
    # higher is better (accuracy): the same numbers read the other way round
    assert _verdicts(scores, lower_is_better=False) == ["not shown at this size", "not evaluated", "reversed"]


def test_paired_table_lists_the_comparisons_of_evaluated_modes():
    scores = _scores(generalist_direct=[1.0, 0.0], generalist_think=[1.0, 1.0], prime_personal_think=[0.0, 0.0],
                     fast_direct=[1.0, 1.0], fast_think=[2.0, 2.0], **{"ref:user-mean": [0.5, 0.5]})
    values = {m: float(np.mean(list(s.values()))) for m, s in scores.items()}
    table = paired_comparisons("test_user", scores, values, metric="mae", lower_is_better=True,
                               references=["ref:user-mean"], n_resamples=100, seed=0)
    assert [(c.a, c.b) for c in table] == [
        ("prime-personal-think", "fast-direct"), ("prime-personal-think", "ref:user-mean"),
        ("generalist-think", "generalist-direct"), ("fast-think", "fast-direct")]
    assert table[1].difference.value == -0.5 and table[1].favours == "prime-personal-think"
