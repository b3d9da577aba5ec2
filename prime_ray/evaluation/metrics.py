"""Task metrics and thinking-health metrics for one evaluated mode. Plain Python and NumPy, no Ray.

Every metric is computed from `Outcome`s: what one mode answered on one example, already parsed and
normalized by the output parser (a label of the set, a rating such as "4", a candidate, a text).

Rules that decide the numbers (docs/evaluation.md says the same for readers of a report):
- An answer that could not be parsed is *wrong*, never dropped: accuracy 0; for ratings the largest
  possible error (max − min); ROUGE 0; for ranking the gold candidate is unranked (Hit@k 0, RR 0).
  Their number is reported as `parse_failures`.
- Macro-F1 averages the per-label F1 over the labels that occur in the gold answers or the parsed
  predictions; an unparsed prediction is a miss for its gold label and a false alarm for none.
- Ranking: the parsed candidate is rank 1; the other candidates follow in the order of the model's
  log-likelihood of answering them (see `candidate_ranking`). Hit@k = share with gold rank ≤ k,
  MRR = mean of 1 / gold rank.
- 95 % intervals come from a seeded percentile bootstrap over examples (scipy.stats.bootstrap).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
REPETITION_N = 3  # the n-gram size of the repetition rate (the trace filter's max_repetition uses 3-grams too)

# Which way is better, per metric name: lower for these, higher for every other one.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "repetition"})


@dataclass(frozen=True)
class Outcome:
    """One mode's answer to one example."""

    example_id: str
    gold: str
    predicted: str | None  # the parsed, normalized answer; None when the output could not be parsed
    trace: str | None = None  # the reasoning text; None: none was asked for (direct); "": asked, wrote none
    gold_rank: int | None = None  # ranking tasks: 1-based rank of the gold candidate; None when unranked
    strict: bool | None = None  # the answer came from an `Answer:` line (False: a fallback found it; None: unknown)
    forced: bool | None = None  # think modes: the answer was forced after the thinking (None: not a think mode)


@dataclass(frozen=True)
class MetricValue:
    """A number with its 95 % bootstrap interval (None when there were too few examples or no resamples)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    def to_json(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high}


# ------------------------------------------------------------------------------ normal forms

# Typographic variants a model (or a data file) writes for the same character.
_TYPOGRAPHIC = str.maketrans({
    "’": "'", "‘": "'", "ʼ": "'", "′": "'", "`": "'", "´": "'",
    "“": '"', "”": '"', "„": '"', "″": '"',
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ",
})


def normalize_label(label: str) -> str:
    """The form labels are compared in, everywhere (parser, `is_correct`, accuracy, macro-F1).

    Unicode NFKC, typographic apostrophes, quotes and dashes as their ASCII forms, case folded,
    whitespace collapsed: "Children’s" and "children's", "Sci–Fi" and "sci-fi" are the same label.
    """
    text = unicodedata.normalize("NFKC", label).translate(_TYPOGRAPHIC)
    return " ".join(text.casefold().split())


_PUNCTUATION = string.punctuation + "“”‘’«»…"
_PUNCTUATION_TO_SPACE = str.maketrans(_PUNCTUATION, " " * len(_PUNCTUATION))


def normalize_text(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: the form text answers are compared in."""
    text = text.lower().translate(_PUNCTUATION_TO_SPACE)
    return " ".join(text.split())


# ------------------------------------------------------------------------------ label metrics


def correct_labels(gold: Sequence[str], predicted: Sequence[str | None]) -> np.ndarray:
    """1.0 where the prediction is the gold label (`normalize_label`), else 0.0 (unparsed: 0)."""
    return np.array([float(p is not None and normalize_label(p) == normalize_label(g))
                     for g, p in zip(gold, predicted, strict=True)])


def accuracy(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    return float(correct_labels(gold, predicted).mean()) if len(gold) else math.nan


def macro_f1(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Mean per-label F1 over the labels present in the gold answers or the parsed predictions."""
    gold_n = [normalize_label(g) for g in gold]
    pred_n = [None if p is None else normalize_label(p) for p in predicted]
    labels = sorted(set(gold_n) | {p for p in pred_n if p is not None})
    if not labels:
        return math.nan
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold_n, pred_n))
        fp = sum(g != label and p == label for g, p in zip(gold_n, pred_n))
        fn = sum(g == label and p != label for g, p in zip(gold_n, pred_n))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- rating metrics


def rating_errors(gold: Sequence[str], predicted: Sequence[str | None], low: float, high: float) -> np.ndarray:
    """|predicted − gold| per example; an unparsed (or non-numeric) prediction costs high − low."""
    worst = high - low
    errors = []
    for g, p in zip(gold, predicted, strict=True):
        try:
            errors.append(abs(float(p) - float(g)) if p is not None else worst)
        except ValueError:
            errors.append(worst)
    return np.array(errors, dtype=float)


def mae(errors: np.ndarray) -> float:
    return float(np.mean(errors)) if len(errors) else math.nan


def rmse(errors: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(errors)))) if len(errors) else math.nan


# ------------------------------------------------------------------------------- text metrics


def rouge_f(gold: Sequence[str], predicted: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Per-example ROUGE-1 and ROUGE-L F-measures (rouge-score, Porter stemming); unparsed: 0."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    r1, rl = [], []
    for g, p in zip(gold, predicted, strict=True):
        if p is None:
            r1.append(0.0)
            rl.append(0.0)
            continue
        scores = scorer.score(g, p)
        r1.append(scores["rouge1"].fmeasure)
        rl.append(scores["rougeL"].fmeasure)
    return {"rouge1": np.array(r1, dtype=float), "rougeL": np.array(rl, dtype=float)}


# ---------------------------------------------------------------------------- ranking metrics


def candidate_ranking(parsed: str | None, candidates: Sequence[str], scores: Sequence[float]) -> list[str]:
    """The ranked candidates: the parsed answer first, then the rest by descending log-likelihood.

    An unparsed answer ranks nothing: the result is empty and the gold candidate is unranked.
    """
    if parsed is None:
        return []
    rest = sorted(
        (i for i, c in enumerate(candidates) if c != parsed), key=lambda i: (-scores[i], i)
    )
    return [parsed] + [candidates[i] for i in rest]


def gold_rank(ranking: Sequence[str], gold: str) -> int | None:
    """1-based position of `gold` in `ranking`, None when absent."""
    return ranking.index(gold) + 1 if gold in ranking else None


def reciprocal_ranks(ranks: Sequence[int | None]) -> np.ndarray:
    return np.array([0.0 if r is None else 1.0 / r for r in ranks], dtype=float)


def hits(ranks: Sequence[int | None], k: int) -> np.ndarray:
    return np.array([float(r is not None and r <= k) for r in ranks], dtype=float)


def hit_at_k(ranks: Sequence[int | None], k: int) -> float:
    return float(hits(ranks, k).mean()) if len(ranks) else math.nan


def mrr(ranks: Sequence[int | None]) -> float:
    return float(reciprocal_ranks(ranks).mean()) if len(ranks) else math.nan


# ----------------------------------------------------------------------------- thinking health


_WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)


def words(text: str | None) -> list[str]:
    """Lowercased words without punctuation, so "great." and "great" are the same word."""
    return _WORD.findall((text or "").lower())


def repetition_rate(text: str | None, n: int = REPETITION_N) -> float | None:
    """Share of the text's word n-grams that repeat an earlier one (0: none repeated; → 1: a loop).

    None when the text has fewer than n words (nothing to measure).
    """
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(texts: Sequence[str | None], n: int = 2) -> float | None:
    """Distinct-n over a set of texts: unique word n-grams / all word n-grams (None when there are none)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        tokens = words(text)
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return len(counts) / total if total else None


# --------------------------------------------------------------------------------- intervals


def bootstrap_interval(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    n_resamples: int,
    seed: int,
) -> tuple[float, float] | None:
    """95 % percentile-bootstrap interval of `statistic(indices)` over n examples resampled with replacement.

    The statistic takes an array of example indices, so paired metrics (macro-F1) resample pairs.
    None with fewer than 2 examples or no resamples. A statistic that is the same on every resample
    (e.g. all errors equal) gives a zero-width interval.
    """
    if n_resamples <= 0 or n < 2:
        return None
    # Imported here: every CLI command and Ray worker imports this module (through the task kinds), and
    # scipy.stats costs about half a second to import; only the intervals need it.
    from scipy import stats

    result = stats.bootstrap(
        (np.arange(n),),
        lambda idx: statistic(np.asarray(idx, dtype=int)),
        n_resamples=n_resamples,
        vectorized=False,
        confidence_level=CONFIDENCE,
        method="percentile",  # robust on small, discrete samples, where BCa is undefined when degenerate
        rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def _with_interval(
    n: int, statistic: Callable[[np.ndarray], float], n_resamples: int, seed: int
) -> MetricValue:
    if n == 0:
        return MetricValue(None)
    value = statistic(np.arange(n))
    interval = bootstrap_interval(n, statistic, n_resamples=n_resamples, seed=seed)
    return MetricValue(value, *(interval or (None, None)))


def mean_interval(values: Sequence[float], *, n_resamples: int, seed: int) -> MetricValue:
    """The mean of per-example values with its bootstrap interval."""
    array = np.asarray(values, dtype=float)
    return _with_interval(len(array), lambda idx: float(array[idx].mean()), n_resamples, seed)


# ---------------------------------------------------------------------------- per-mode summary


def thinking_health(outcomes: Sequence[Outcome], *, n_resamples: int, seed: int) -> dict[str, MetricValue]:
    """Parse rates, forced share, repetition rate (mean over traces of ≥ 3 words), distinct-2 and mean trace length.

    `parse_rate` counts every parsed answer, forced ones included; `strict_parse_rate` only those the
    model wrote on an `Answer:` line itself (the rest were found by the parser's fallback, which reads
    the end of the text, or forced). `forced` is the share of answers forced after the thinking (budget
    forcing), None when no outcome is of a think mode. Only repetition carries an interval. Trace length
    counts an empty trace (asked to think, answered at once) as 0 words; modes that were not asked to
    think (trace None) get None for trace metrics.
    """
    n = len(outcomes)
    traces = [o.trace for o in outcomes if o.trace is not None]
    repetition = [r for r in (repetition_rate(t) for t in traces) if r is not None]
    strict = sum(o.predicted is not None and o.strict is not False for o in outcomes)
    return {
        "parse_rate": MetricValue(sum(o.predicted is not None for o in outcomes) / n if n else None),
        "strict_parse_rate": MetricValue(strict / n if n else None),
        "forced": MetricValue(sum(o.forced is True for o in outcomes) / n
                              if any(o.forced is not None for o in outcomes) else None),
        "repetition": mean_interval(repetition, n_resamples=n_resamples, seed=seed) if repetition else MetricValue(None),
        "distinct_2": MetricValue(distinct_n(traces)),
        "trace_words": MetricValue(float(np.mean([len(words(t)) for t in traces])) if traces else None),
    }
