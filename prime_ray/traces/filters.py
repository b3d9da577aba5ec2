"""The verification filters for synthesized traces, as pure functions with one verdict each.

A verdict is named for what True means, and True is a pass. Every verdict is computed for every trace
and stored, so the statistics can say how many traces each filter removed; `keep` then applies the
ones the spec turns on.

    parsed           the output has a reasoning block and an answer the parser reads
    answer_match     the trace's final answer is the gold one (labels, ratings, candidates); optionally
                     also the answer G reaches from the trace without the hint
    hint_not_leaked  the trace does not say that the answer was given, nor open by stating it
    low_repetition   the share of repeated word 3-grams is at most `max_repetition` (no degenerate loop)
    length_in_range  the trace has between `min_trace_words` and `max_trace_words` words
    enough_gain      log p(y | x, trace) − log p(y | x) above `min_gain` (any task, when set); free text:
                     also > 0 and among the best `text_keep_top`
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from prime_ray.evaluation.metrics import repetition_rate, words
from prime_ray.spec import TaskSpec, TraceFilters
from prime_ray.tasks import task_kind

FILTERS = ("parsed", "answer_match", "hint_not_leaked", "low_repetition", "length_in_range", "enough_gain")

# Phrases with which a rationalization gives away that it was handed the answer.
_LEAK_PATTERNS = [
    r"\bthe\s+hint\b",
    r"\bhint(ed|s)?\s+(says|is|that|of)\b",
    r"\b(answer|rating|label|output)\s+(is|was|has\s+been)\s+(already\s+)?(given|provided|known|told)\b",
    r"\bgiven\s+(the\s+)?(answer|rating|label|output)\b",
    r"\b(answer|rating|label)\s+(given|provided)\b",
    r"\bas\s+(provided|given)\b",
    r"\bwe\s+(are|were|have\s+been)\s+told\b",
    r"\b(i|we)\s+(am|are|was|were)\s+(given|told)\s+(that\s+)?(the\s+)?(answer|rating|label)\b",
    r"\b(expected|target|gold|real|actual|true)\s+(answer|rating|label|output)\b",
]
_LEAK_RE = re.compile("|".join(_LEAK_PATTERNS), re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n")


def repetition(text: str) -> float:
    """The evaluation's `repetition_rate` (the same measure, so a trace kept here scores the same there),
    with 0.0 for a text too short to repeat itself."""
    rate = repetition_rate(text)
    return 0.0 if rate is None else rate


def mentions_hint(trace: str) -> bool:
    return _LEAK_RE.search(trace) is not None


def opens_with_answer(trace: str, gold: str) -> bool:
    """The first sentence states the gold answer ("The answer is 4.", "This user rated it as 4 out of 5.").

    Reasoning that starts from its conclusion restates the hint instead of deriving it from the memory.
    An opening that cites an episode with the same value ("They rated Heat as 4") is caught too: the
    two cannot be told apart without the titles, and dropping a few good traces is the safe side.
    """
    first = _SENTENCE_END_RE.split(trace.strip(), maxsplit=1)[0]
    gold = gold.strip()
    if not gold:
        return False
    value = rf"[\"'“‘*]*{re.escape(gold)}[\"'”’*]*(?!\w)"
    stated = [
        # "answer is 4", "rating: 4", "a score of 4", "rated it as a 4", "rate this movie 4"
        rf"\b(answer|rating|label|prediction|score|rated?|rates)\b\W*(?:\w+\W+){{0,4}}?"
        rf"(is|as|of|:|=|would\s+be|will\s+be)?\s*(a\s+|an\s+)?{value}",
        # "4 out of 5", "4/5", "4 stars"
        rf"(?<![\w.]){value}\s*(out\s+of\s+\d|/\s*\d|stars?\b)",
    ]
    return any(re.search(p, first, re.IGNORECASE) for p in stated)


def leaks_hint(trace: str, gold: str) -> bool:
    return mentions_hint(trace) or opens_with_answer(trace, gold)


def verdicts(
    *,
    trace: str | None,
    answer_ok: bool | None,
    gold: str,
    filters: TraceFilters,
) -> dict[str, bool]:
    """The verdicts that need no ranking against sibling traces (all but `enough_gain`).

    `trace` is None when the output could not be parsed; `answer_ok` is whether the trace's answer is
    right (None when there is no exact answer to check, e.g. free text).
    """
    if trace is None:
        return {"parsed": False, "answer_match": False, "hint_not_leaked": False, "low_repetition": False, "length_in_range": False}
    count = len(words(trace))
    return {
        "parsed": True,
        "answer_match": bool(answer_ok),
        "hint_not_leaked": not leaks_hint(trace, gold),
        "low_repetition": repetition(trace) <= filters.max_repetition,
        "length_in_range": filters.min_trace_words <= count <= filters.max_trace_words,
    }


def applied_filters(task: TaskSpec, filters: TraceFilters) -> tuple[str, ...]:
    """The filters a trace must pass to be kept, in the order the statistics count them."""
    exact = task_kind(task).exact_answer
    on = {
        "parsed": True,
        "answer_match": exact and filters.answer_match,
        "hint_not_leaked": filters.leaked_hint,
        "low_repetition": True,
        "length_in_range": True,
        "enough_gain": not exact or filters.min_gain is not None,
    }
    return tuple(name for name in FILTERS if on[name])


def gain_passes(gain: float | None, task: TaskSpec, filters: TraceFilters) -> bool:
    """The gain verdict before free-text ranking: above `min_gain` when set, and above 0 for free text.

    A trace without a gain (its scoring failed) does not pass.
    """
    if gain is None:
        return False
    if filters.min_gain is not None and not gain > filters.min_gain:
        return False
    return task_kind(task).exact_answer or gain > 0


def rank_by_gain(gains: Sequence[float | None], eligible: Sequence[bool], keep_top: int) -> list[bool]:
    """Free text: among one example's eligible traces, the `keep_top` with the largest positive gain."""
    candidates = [(g, i) for i, (g, ok) in enumerate(zip(gains, eligible)) if ok and g is not None and g > 0]
    best = {i for _, i in sorted(candidates, key=lambda c: (-c[0], c[1]))[:keep_top]}
    return [i in best for i in range(len(gains))]


def keep(verdict: dict[str, bool], task: TaskSpec, filters: TraceFilters) -> bool:
    return all(verdict.get(name, False) for name in applied_filters(task, filters))


def survivors_after_each(all_verdicts: Sequence[dict[str, bool]], order: Sequence[str]) -> dict[str, int]:
    """How many traces are left after each filter, applied in `order` (the funnel of the statistics)."""
    left = list(all_verdicts)
    counts: dict[str, int] = {}
    for name in order:
        left = [v for v in left if v.get(name, False)]
        counts[name] = len(left)
    return counts
