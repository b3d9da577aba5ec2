"""Paired comparisons between modes, and a verdict for each claim of the method.

Every mode (and every reference) answers the same examples, so two modes are compared on their
per-example differences, not on their separate intervals (which overlap even when one mode is better
on nearly every example). For the primary metric m, whose value is the mean of a per-example score
(accuracy: 1/0; MAE: |error|; ROUGE-1; reciprocal rank):

    difference = mean_i (m_i(A) − m_i(B))   over the examples both answered (n),
    95 % interval: paired percentile bootstrap (scipy.stats.bootstrap, paired=True): resample examples,
                   keeping each example's two scores together.

A *favours* B when the interval lies entirely on B's better side (below 0 when lower is better), A when
on A's; neither when it contains 0 (or there are fewer than 2 examples, or no resamples).

The claims (DESIGN.md §2), each read from one paired comparison on each split:
1. generic thinking does not beat answering directly: generalist-direct vs generalist-think;
2. the fast-thinking student degrades when asked to think: its best direct mode vs fast-think;
3. the PRIME student is best: prime-personal-think vs the best other model mode (generalist and fast).
Verdict: *shown* when the interval favours what the claim says, *reversed* when it favours the other
side, *not shown at this size* when it contains 0, *not evaluated* when a mode is missing. "Best" modes
are chosen by their point value on the same examples, which favours them slightly: a claim that
compares against a best mode is, if anything, harder to show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from prime_ray.evaluation.metrics import CONFIDENCE, MetricValue

__all__ = ["Claim", "Comparison", "claims", "paired_comparisons", "paired_difference"]

SHOWN, NOT_SHOWN, REVERSED, NOT_EVALUATED = "shown", "not shown at this size", "reversed", "not evaluated"

PRIME_THINK = "prime-personal-think"
FAST_DIRECT = ("fast-direct", "fast-personal-direct")
FAST_ALL = (*FAST_DIRECT, "fast-think")
GENERALIST_ALL = ("generalist-direct", "generalist-personal-direct", "generalist-think", "generalist-personal-think")


def paired_difference(a: Sequence[float], b: Sequence[float], *, n_resamples: int, seed: int) -> MetricValue:
    """mean(a − b) with its 95 % paired percentile-bootstrap interval (None below 2 pairs or 0 resamples)."""
    xs, ys = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(xs) != len(ys):
        raise ValueError(f"paired samples differ in length: {len(xs)} and {len(ys)}")
    if not len(xs):
        return MetricValue(None)
    value = float(np.mean(xs - ys))
    if n_resamples <= 0 or len(xs) < 2:
        return MetricValue(value)
    from scipy import stats  # here, not at the top: see bootstrap_interval in metrics.py

    result = stats.bootstrap(
        (xs, ys),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return MetricValue(value)
    return MetricValue(value, low, high)


@dataclass(frozen=True)
class Comparison:
    """A − B on one split's shared examples, in the primary metric's units."""

    a: str
    b: str
    why: str  # what the pair tests
    split: str
    metric: str
    lower_is_better: bool
    n: int
    difference: MetricValue

    @property
    def favours(self) -> str | None:
        """The mode the interval favours, or None when it contains 0 (or has no interval)."""
        low, high = self.difference.low, self.difference.high
        if low is None or high is None:
            return None
        if low > 0:
            return self.b if self.lower_is_better else self.a
        if high < 0:
            return self.a if self.lower_is_better else self.b
        return None

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "why": self.why, "split": self.split, "metric": self.metric,
                "n": self.n, "difference": self.difference.to_json(), "favours": self.favours}


@dataclass(frozen=True)
class Claim:
    number: int
    statement: str
    split: str
    expected_better: str | None  # the mode the claim says is better
    comparison: Comparison | None
    verdict: str
    note: str = ""

    def to_json(self) -> dict:
        return {"number": self.number, "statement": self.statement, "split": self.split, "verdict": self.verdict,
                "expected_better": self.expected_better, "note": self.note,
                "comparison": self.comparison.to_json() if self.comparison else None}


def _best(modes: Sequence[str], values: Mapping[str, float | None], lower_is_better: bool) -> str | None:
    """The mode with the best point value among `modes` that were measured (ties: the first listed)."""
    measured = {m: v for m in modes if (v := values.get(m)) is not None}
    if not measured:
        return None
    sign = 1 if lower_is_better else -1
    return min(measured, key=lambda m: sign * measured[m])  # min keeps the first of equal values


def _compare(a: str | None, b: str | None, why: str, split: str, scores: Mapping[str, Mapping[str, float]],
             metric: str, lower_is_better: bool, n_resamples: int, seed: int) -> Comparison | None:
    if a is None or b is None or a not in scores or b not in scores:
        return None
    shared = sorted(set(scores[a]) & set(scores[b]))
    diff = paired_difference([scores[a][e] for e in shared], [scores[b][e] for e in shared],
                             n_resamples=n_resamples, seed=seed)
    return Comparison(a, b, why, split, metric, lower_is_better, len(shared), diff)


def paired_comparisons(
    split: str,
    scores: Mapping[str, Mapping[str, float]],
    values: Mapping[str, float | None],
    *,
    metric: str,
    lower_is_better: bool,
    references: Sequence[str] = (),
    n_resamples: int,
    seed: int,
) -> list[Comparison]:
    """The paired table of one split: the comparisons whose modes were evaluated.

    `scores`: mode → example id → the primary metric's per-example score; `values`: mode → its value.
    """
    fast_best = _best(FAST_ALL, values, lower_is_better)
    fast_direct_best = _best(FAST_DIRECT, values, lower_is_better)
    ref_best = _best(references, values, lower_is_better)
    pairs = [
        (PRIME_THINK, fast_best, "PRIME thinking vs the fast student's best mode"),
        (PRIME_THINK, "generalist-personal-direct", "PRIME thinking vs the generalist with memory, answering directly"),
        (PRIME_THINK, "prime-personal-direct", "the PRIME student thinking vs answering directly"),
        (PRIME_THINK, ref_best, "PRIME thinking vs the best non-LLM reference"),
        ("generalist-think", "generalist-direct", "generic thinking vs answering directly (generalist)"),
        ("generalist-personal-think", "generalist-personal-direct", "personal thinking vs answering directly, with memory (generalist)"),
        ("fast-think", fast_direct_best, "the fast student asked to think vs its best direct mode"),
    ]
    out = []
    for a, b, why in pairs:
        if a == b:
            continue
        comparison = _compare(a, b, why, split, scores, metric, lower_is_better, n_resamples, seed)
        if comparison is not None:
            out.append(comparison)
    return out


def _verdict(comparison: Comparison | None, expected_better: str | None) -> str:
    if comparison is None or expected_better is None:
        return NOT_EVALUATED
    if comparison.favours is None:
        return NOT_SHOWN
    return SHOWN if comparison.favours == expected_better else REVERSED


def claims(
    split: str,
    scores: Mapping[str, Mapping[str, float]],
    values: Mapping[str, float | None],
    *,
    metric: str,
    lower_is_better: bool,
    n_resamples: int,
    seed: int,
) -> list[Claim]:
    """The three claims' verdicts on one split (see the module docstring)."""

    def compare(a, b, why):
        return _compare(a, b, why, split, scores, metric, lower_is_better, n_resamples, seed)

    out = []
    one = compare("generalist-direct", "generalist-think", "generalist: direct vs generic thinking")
    out.append(Claim(1, "generic thinking does not beat answering directly (generalist-think no better than generalist-direct)",
                     split, "generalist-direct", one, _verdict(one, "generalist-direct"),
                     "" if one else "needs generalist-direct and generalist-think"))

    fast_direct = _best(FAST_DIRECT, {m: values.get(m) for m in scores}, lower_is_better)
    two = compare(fast_direct, "fast-think", "fast student: its best direct mode vs asked to think")
    out.append(Claim(2, f"the fast-thinking student degrades when asked to think (fast-think worse than {fast_direct or 'fast-direct'})",
                     split, fast_direct, two, _verdict(two, fast_direct),
                     "" if two else "needs fast-think and a fast direct mode"))

    others = [m for m in (*GENERALIST_ALL, *FAST_ALL) if m in scores]
    rival = _best(others, {m: values.get(m) for m in others}, lower_is_better)
    three = compare(PRIME_THINK, rival, "PRIME thinking vs the best other model mode")
    out.append(Claim(3, f"the PRIME student is best ({PRIME_THINK} better than {rival or 'every other model mode'})",
                     split, PRIME_THINK, three, _verdict(three, PRIME_THINK),
                     "" if three else f"needs {PRIME_THINK} and another model mode"))
    return out
