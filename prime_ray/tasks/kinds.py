"""The four task kinds: label, rating, text, ranking (see `prime_ray.tasks.base` for what a kind says).

Answer normalization per kind (what `parse_answer` returns):
- label: a label of the set, in the set's spelling; matched after `normalize_label` (case, Unicode and
  typographic variants), or the one label the answer names as a whole word;
- rating: a number ("4", "3.5"); "4/5", "4 out of 5" and number words count; integer tasks round half up;
- ranking: a candidate's text; "2", "[2]" and "Candidate 2" map to the second candidate;
- text: the text itself, wrappers (quotes, markdown) removed.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from prime_ray.evaluation.metrics import (
    MetricValue,
    correct_labels,
    hits,
    macro_f1,
    mae,
    normalize_label,
    normalize_text,
    rating_errors,
    reciprocal_ranks,
    rmse,
    rouge_f,
)
from prime_ray.tasks.base import Parsed, Reference, TaskKind, register_task_kind, shown, with_interval

_NUMBER = re.compile(r"(?<![\w.])(?P<head>[-+]?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*\d+(?:\.\d+)?)?", re.IGNORECASE)
_WORD_NUMBERS = {
    w: i
    for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
}
WRAPPERS = " \t\r\n*_`\"'“”‘’«»[](){}<>"
_TRAILING = WRAPPERS + ".,;:!?"
_CANDIDATE_NUMBER = re.compile(r"^(?:candidate|option|choice|reply|number|no\.?)?\s*[\[(]?#?(\d+)[\])]?(?:\W.*)?$", re.IGNORECASE | re.DOTALL)


def _strip_wrappers(text: str) -> str:
    return text.strip(_TRAILING)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _most_frequent(values: Sequence[str], key=lambda v: v) -> str | None:
    """The most frequent value; ties go to the smallest key, so the choice does not depend on order."""
    if not values:
        return None
    counts = Counter(key(v) for v in values)
    first: dict = {}
    for v in values:
        first.setdefault(key(v), v)
    best = min(counts, key=lambda k: (-counts[k], k))
    return first[best]


# ---------------------------------------------------------------------------------------- rating


def numbers(text: str, words: bool = False) -> list[float]:
    """Numbers in order; "4/5" and "4 out of 5" count as their numerator; number words when `words`."""
    found: list[tuple[int, float]] = []
    for match in _NUMBER.finditer(text):
        found.append((match.start(), float(match.group("head"))))
    if words:
        for match in re.finditer(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", text, re.IGNORECASE):
            found.append((match.start(), float(_WORD_NUMBERS[match.group(1).lower()])))
    return [value for _, value in sorted(found)]


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _round_half_up(value: float) -> float:
    return float(math.floor(value + 0.5))


def _as_number(value: str) -> float | None:
    try:
        number = float(value.strip().replace(",", "."))
    except (ValueError, AttributeError):
        found = numbers(value or "")
        return found[0] if found else None
    return number if math.isfinite(number) else None


def _mean(task, outputs: Sequence[str]) -> str | None:
    values = [v for v in (_as_number(o) for o in outputs) if v is not None]
    return f"{float(np.mean(values)):.6g}" if values else None


def _most_frequent_number(task, outputs: Sequence[str]) -> str | None:
    values = [_format_number(v) for v in (_as_number(o) for o in outputs) if v is not None]
    return _most_frequent(values, key=float)


@register_task_kind
class RatingKind(TaskKind):
    name = "rating"
    primary_metric = "mae"

    def answer_instruction(self, task) -> str:
        kind = "a whole number" if task.integer else "a number"
        return f"Answer with {kind} from {task.min:g} to {task.max:g}."

    def answer_tokens(self, task) -> int:
        return 8

    def parse_answer(self, task, raw, fallback, candidates) -> Parsed:
        lo, hi = task.min, task.max
        bounds = f"[{_format_number(lo)}, {_format_number(hi)}]"
        if raw is not None:
            values = numbers(raw, words=True)
            if not values:
                return None, raw, f"no number in answer {raw!r}"
            value = _round_half_up(values[0]) if task.integer else values[0]
            if not lo <= value <= hi:
                return None, raw, f"rating {_format_number(values[0])} out of range {bounds}"
            return _format_number(value), raw, None
        in_range = [v for v in numbers(fallback) if lo <= (_round_half_up(v) if task.integer else v) <= hi]
        if not in_range:
            return None, None, f"no answer found (no number in range {bounds})"
        value = _round_half_up(in_range[-1]) if task.integer else in_range[-1]
        return _format_number(value), _format_number(in_range[-1]), None

    def is_correct(self, task, predicted, gold) -> bool:
        if predicted is None:
            return False
        pred, ref = _as_number(predicted), _as_number(gold)
        if pred is None or ref is None:
            return False
        if task.integer:
            pred, ref = _round_half_up(pred), _round_half_up(ref)
        return abs(pred - ref) <= task.tolerance + 1e-9

    def output_problem(self, task, output, candidates):
        try:
            value = float(output)
        except ValueError:
            return "output", f"expected a rating from {task.min:g} to {task.max:g}, got {shown(output)}"
        if not math.isfinite(value) or not task.min <= value <= task.max:
            return "output", f"rating {output} is outside {task.min:g}..{task.max:g}"
        if task.integer and value != int(value):
            return "output", f"expected a whole-number rating, got {output}"
        return None

    def metric_names(self, task) -> list[str]:
        return ["mae", "rmse", "accuracy"]

    def example_scores(self, task, outcomes):
        errors = rating_errors([o.gold for o in outcomes], [o.predicted for o in outcomes], task.min, task.max)
        return {"mae": errors, "accuracy": (errors <= task.tolerance + 1e-9).astype(float)}

    def metrics(self, task, outcomes, *, n_resamples, seed) -> dict[str, MetricValue]:
        scores = self.example_scores(task, outcomes)
        errors, n = scores["mae"], len(outcomes)
        return {
            "mae": with_interval(n, lambda idx: mae(errors[idx]), n_resamples, seed),
            "rmse": with_interval(n, lambda idx: rmse(errors[idx]), n_resamples, seed),
            "accuracy": with_interval(n, lambda idx: float(scores["accuracy"][idx].mean()), n_resamples, seed),
        }

    def metric_note(self, task) -> str:
        return f"Rating accuracy: share with |prediction − gold| ≤ {task.tolerance:g} (data.task.tolerance)."

    def references(self, task):
        return (
            Reference("global-mean", "crowd", _mean, "the mean rating of the training users' history"),
            Reference("most-frequent", "crowd", _most_frequent_number, "the most frequent rating of the training users' history"),
            Reference("user-mean", "user", _mean, "the mean of the user's own history ratings"),
            Reference("item-mean", "item", _mean, "the item's mean rating among the training users"),
        )


# ----------------------------------------------------------------------------------------- label


def mentioned(options: Sequence[str], text: str) -> list[str]:
    """Options written in `text` as whole words (compared in `normalize_label` form); an option inside a
    longer mentioned one does not count."""
    normal = normalize_label(text)
    keys = {o: normalize_label(o) for o in options}
    hits_ = [o for o in options if re.search(r"(?<!\w)" + re.escape(keys[o]) + r"(?!\w)", normal)]
    return [o for o in hits_ if not any(o != other and keys[o] in keys[other] for other in hits_)]


def _most_frequent_label(task, outputs: Sequence[str]) -> str | None:
    by_key = {normalize_label(label): label for label in task.labels}
    chosen = _most_frequent(list(outputs), key=normalize_label)
    return None if chosen is None else by_key.get(normalize_label(chosen), chosen)


@register_task_kind
class LabelKind(TaskKind):
    name = "label"
    primary_metric = "accuracy"

    def answer_instruction(self, task) -> str:
        return "Answer with exactly one of these labels: " + ", ".join(task.labels) + "."

    def answer_tokens(self, task) -> int:
        return 16

    def parse_answer(self, task, raw, fallback, candidates) -> Parsed:
        by_key = {normalize_label(label): label for label in task.labels}
        if raw is not None:
            cleaned = _strip_wrappers(raw)
            if normalize_label(cleaned) in by_key:
                return by_key[normalize_label(cleaned)], raw, None
            found = mentioned(task.labels, cleaned)
            if len(found) == 1:
                return found[0], raw, None
            if len(found) > 1:
                return None, raw, f"answer {cleaned!r} names several labels: {', '.join(found)}"
            return None, raw, f"label {cleaned!r} not in label set"
        line = _last_line(fallback)
        found = mentioned(task.labels, line)
        if len(found) == 1:
            return found[0], _strip_wrappers(line), None
        return None, None, "no answer found" + (f" (several labels at the end: {', '.join(found)})" if found else "")

    def is_correct(self, task, predicted, gold) -> bool:
        return predicted is not None and normalize_label(predicted) == normalize_label(gold)

    def output_problem(self, task, output, candidates):
        if normalize_label(output) not in {normalize_label(label) for label in task.labels}:
            labels = ", ".join(task.labels[:8]) + (", …" if len(task.labels) > 8 else "")
            return "output", f"{shown(output)} is not one of the task's labels ({labels})"
        return None

    def metric_names(self, task) -> list[str]:
        return ["accuracy", "macro_f1"]

    def example_scores(self, task, outcomes):
        return {"accuracy": correct_labels([o.gold for o in outcomes], [o.predicted for o in outcomes])}

    def metrics(self, task, outcomes, *, n_resamples, seed) -> dict[str, MetricValue]:
        gold, pred, n = [o.gold for o in outcomes], [o.predicted for o in outcomes], len(outcomes)
        right = self.example_scores(task, outcomes)["accuracy"]
        return {
            "accuracy": with_interval(n, lambda idx: float(right[idx].mean()), n_resamples, seed),
            "macro_f1": with_interval(n, lambda idx: macro_f1([gold[i] for i in idx], [pred[i] for i in idx]),
                                      n_resamples, seed),
        }

    def references(self, task):
        return (
            Reference("majority", "crowd", _most_frequent_label, "the most frequent label of the training users' history"),
            Reference("user-majority", "user", _most_frequent_label, "the user's own most frequent label"),
            Reference("item-majority", "item", _most_frequent_label, "the item's most frequent label among the training users"),
        )


# --------------------------------------------------------------------------------------- ranking


def _candidate(raw: str, candidates: Sequence[str]) -> tuple[str | None, str | None]:
    """(candidate, None) or (None, why): the candidate's text, its number ("2", "[2]", "Candidate 2"), or
    an unambiguous part of its text."""
    cleaned = _strip_wrappers(raw)
    key = normalize_text(cleaned)
    if not key:
        return None, "empty answer"
    exact = [c for c in candidates if normalize_text(c) == key]
    if exact:
        return exact[0], None
    number = _CANDIDATE_NUMBER.match(cleaned)
    if number:
        index = int(number.group(1))
        if 1 <= index <= len(candidates):
            return candidates[index - 1], None
        return None, f"candidate {index} out of range [1, {len(candidates)}]"
    partial = [c for c in candidates if (len(key) >= 8 and normalize_text(c).startswith(key)) or normalize_text(c) in key]
    if len(partial) == 1:
        return partial[0], None
    return None, f"answer {cleaned[:60]!r} matches {'several candidates' if partial else 'no candidate'}"


@register_task_kind
class RankingKind(TaskKind):
    name = "ranking"
    primary_metric = "mrr"

    def answer_instruction(self, task) -> str:
        return "Answer with the text of the one candidate this user would choose."

    def answer_tokens(self, task) -> int:
        return 48

    def parse_answer(self, task, raw, fallback, candidates) -> Parsed:
        candidates = list(candidates or [])
        if not candidates:
            return None, raw, "no candidates given for a ranking task"
        if raw is not None:
            chosen, why = _candidate(raw, candidates)
            return chosen, raw, why
        line = _last_line(fallback)
        if not line:
            return None, None, "no answer found"
        mention = re.search(r"(?:candidate|option|choice|reply)\s*#?\[?(\d+)\]?|\[(\d+)\]", line, re.IGNORECASE)
        if mention:
            index = int(mention.group(1) or mention.group(2))
            if 1 <= index <= len(candidates):
                return candidates[index - 1], _strip_wrappers(line), None
        chosen, _ = _candidate(line, candidates)
        if chosen is not None:
            return chosen, _strip_wrappers(line), None
        return None, None, "no answer found"

    def is_correct(self, task, predicted, gold) -> bool:
        return predicted is not None and normalize_text(predicted) == normalize_text(gold)

    def output_problem(self, task, output, candidates):
        if candidates is None or len(candidates) < 2:
            return "candidates", "a ranking task needs at least 2 candidates per item"
        return None

    def metric_names(self, task) -> list[str]:
        return ["mrr"] + [f"hit@{k}" for k in task.hit_k]

    def example_scores(self, task, outcomes):
        ranks = [o.gold_rank for o in outcomes]
        return {"mrr": reciprocal_ranks(ranks)} | {f"hit@{k}": hits(ranks, k) for k in task.hit_k}


# ------------------------------------------------------------------------------------------ text


def _latest(task, outputs: Sequence[str]) -> str | None:
    return outputs[-1] if outputs else None


@register_task_kind
class TextKind(TaskKind):
    name = "text"
    primary_metric = "rouge1"
    exact_answer = False
    multiline_answer = True

    def answer_instruction(self, task) -> str:
        return "Answer with the text only."

    def answer_tokens(self, task) -> int:
        return task.max_answer_tokens + 8

    def parse_answer(self, task, raw, fallback, candidates) -> Parsed:
        if raw is None:
            if not fallback.strip():
                return None, None, "no answer found"
            raw = fallback.strip()
        answer = raw.strip().strip(WRAPPERS).strip()
        if not answer:
            return None, raw or None, "empty answer"
        return answer, raw, None

    def is_correct(self, task, predicted, gold) -> bool:
        return predicted is not None and normalize_text(predicted) == normalize_text(gold)

    def output_problem(self, task, output, candidates):
        return None if output.strip() else ("output", "a text task needs a non-empty output")

    def metric_names(self, task) -> list[str]:
        return ["rouge1", "rougeL"]

    def example_scores(self, task, outcomes):
        return rouge_f([o.gold for o in outcomes], [o.predicted for o in outcomes])

    def references(self, task):
        return (Reference("user-latest", "user", _latest, "the user's latest history text"),)
