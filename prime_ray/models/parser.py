"""The one output parser: trace and answer from generated text. Never raises on malformed text.

Small models write malformed output often, so the parser is lenient where the intent is clear and
says why (`reason`) where it is not:
- the trace is the text inside `<think>…</think>`; an unclosed block ends at the answer line;
- the answer is the first `Answer:` line after the trace (markdown, case and "Final answer" allowed;
  text after it is ignored); without one, a task-specific fallback looks at the end of the text;
- the answer is normalized for the task: a label of the set (its spelling), a number ("4", "3.5"),
  a candidate's text (a number "2" or "[2]" maps to the second candidate), or the text itself.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from prime_ray.spec import TaskSpec

__all__ = ["ParsedOutput", "is_correct", "normalize_text", "parse_output"]


@dataclass(frozen=True)
class ParsedOutput:
    trace: str | None  # the text inside <think>…</think>, if any
    answer: str | None  # the answer normalized for the task (a label of the set, "4", a candidate), None if unparseable
    raw_answer: str | None  # the answer text as written
    reason: str | None  # why no answer could be parsed (None when `answer` is set)

    @property
    def ok(self) -> bool:
        return self.answer is not None


_THINK_OPEN = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
# "Answer:", "**Answer:**", "Final answer -", "ANSWER：" at the start of a line or after a sentence.
_ANSWER = re.compile(r"(?:^|(?<=[\s*#>_.]))(?:final\s+)?answer\s*\**\s*[:：]\s*\**", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:\s*(?:/|out\s+of)\s*\d+(?:\.\d+)?)?", re.IGNORECASE)
_WORD_NUMBERS = {
    w: i
    for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
}
_WRAPPERS = " \t\r\n*_`\"'“”‘’«»[](){}<>"
_TRAILING = _WRAPPERS + ".,;:!?"
_CANDIDATE_NUMBER = re.compile(r"^(?:candidate|option|choice|reply|number|no\.?)?\s*[\[(]?#?(\d+)[\])]?(?:\W.*)?$", re.IGNORECASE | re.DOTALL)


def normalize_text(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: the form text answers are compared in."""
    text = text.lower().translate(str.maketrans({c: " " for c in string.punctuation + "“”‘’«»…"}))
    return " ".join(text.split())


def _split_trace(text: str) -> tuple[str | None, str, bool]:
    """(trace, the text after it, whether the think block was closed)."""
    open_match = _THINK_OPEN.search(text)
    close_match = _THINK_CLOSE.search(text, open_match.end() if open_match else 0)
    if open_match and close_match:
        return text[open_match.end() : close_match.start()].strip(), text[close_match.end() :], True
    if close_match:  # the opening tag was in the prompt, or dropped
        return text[: close_match.start()].strip(), text[close_match.end() :], True
    if open_match:  # unclosed: the trace runs to the answer line, if there is one
        body = text[open_match.end() :]
        answer = _ANSWER.search(body)
        if answer:
            return body[: answer.start()].strip(), body[answer.start() :], False
        return body.strip(), "", False
    return None, text, False


def _answer_text(rest: str, multiline: bool) -> str | None:
    """The text after the first answer marker: its line (or paragraph for free text); None if no marker."""
    match = _ANSWER.search(rest)
    if not match:
        return None
    after = rest[match.end() :].lstrip(" \t")
    if after.startswith(("\n", "\r")) or not after.strip():  # "Answer:\n4": the value is on the next line
        after = after.lstrip()
    if multiline:
        return re.split(r"\n\s*\n", after.strip(), maxsplit=1)[0].strip() if after.strip() else ""
    return after.split("\n", 1)[0].strip()


def _strip_wrappers(text: str) -> str:
    return text.strip(_TRAILING)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------- per task


def _numbers(text: str, words: bool = False) -> list[float]:
    """Numbers in order; "4/5" and "4 out of 5" count as their numerator; number words when `words`."""
    found: list[tuple[int, float]] = []
    for match in _NUMBER.finditer(text):
        head = re.match(r"[-+]?\d+(?:\.\d+)?", match.group()).group()
        found.append((match.start(), float(head)))
    if words:
        for match in re.finditer(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", text, re.IGNORECASE):
            found.append((match.start(), float(_WORD_NUMBERS[match.group(1).lower()])))
    return [value for _, value in sorted(found)]


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _round_half_up(value: float) -> float:
    return float(math.floor(value + 0.5))


def _rating(raw: str | None, fallback_text: str, task) -> tuple[str | None, str | None, str | None]:
    lo, hi = task.min, task.max
    bounds = f"[{_format_number(lo)}, {_format_number(hi)}]"
    if raw is not None:
        values = _numbers(raw, words=True)
        if not values:
            return None, raw, f"no number in answer {raw!r}"
        value = _round_half_up(values[0]) if task.integer else values[0]
        if not lo <= value <= hi:
            return None, raw, f"rating {_format_number(values[0])} out of range {bounds}"
        return _format_number(value), raw, None
    in_range = [v for v in _numbers(fallback_text) if lo <= (_round_half_up(v) if task.integer else v) <= hi]
    if not in_range:
        return None, None, f"no answer found (no number in range {bounds})"
    value = _round_half_up(in_range[-1]) if task.integer else in_range[-1]
    return _format_number(value), _format_number(in_range[-1]), None


def _mentioned(options: Sequence[str], text: str) -> list[str]:
    """Options written in `text` as whole words; an option inside a longer mentioned one does not count."""
    lowered = text.lower()
    hits = [o for o in options if re.search(r"(?<!\w)" + re.escape(o.lower()) + r"(?!\w)", lowered)]
    return [o for o in hits if not any(o != other and o.lower() in other.lower() for other in hits)]


def _label(raw: str | None, fallback_text: str, task) -> tuple[str | None, str | None, str | None]:
    by_key = {label.strip().lower(): label for label in task.labels}
    if raw is not None:
        cleaned = _strip_wrappers(raw)
        if cleaned.lower() in by_key:
            return by_key[cleaned.lower()], raw, None
        hits = _mentioned(task.labels, cleaned)
        if len(hits) == 1:
            return hits[0], raw, None
        if len(hits) > 1:
            return None, raw, f"answer {cleaned!r} names several labels: {', '.join(hits)}"
        return None, raw, f"label {cleaned!r} not in label set"
    line = _last_line(fallback_text)
    hits = _mentioned(task.labels, line)
    if len(hits) == 1:
        return hits[0], _strip_wrappers(line), None
    return None, None, "no answer found" + (f" (several labels at the end: {', '.join(hits)})" if hits else "")


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


def _ranking(raw: str | None, fallback_text: str, candidates) -> tuple[str | None, str | None, str | None]:
    if not candidates:
        return None, raw, "no candidates given for a ranking task"
    if raw is not None:
        chosen, why = _candidate(raw, candidates)
        return chosen, raw, why
    line = _last_line(fallback_text)
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


def _text(raw: str | None, fallback_text: str, fallback_allowed: bool) -> tuple[str | None, str | None, str | None]:
    if raw is None:
        if not fallback_allowed:
            return None, None, "no answer found"
        raw = fallback_text.strip()
    answer = raw.strip().strip(_WRAPPERS).strip()
    if not answer:
        return None, raw or None, "empty answer"
    return answer, raw, None


def parse_output(text: str, task: TaskSpec, candidates: Sequence[str] | None = None) -> ParsedOutput:
    """Trace and normalized answer from generated text; `reason` says why when there is no answer."""
    try:
        text = text or ""
        trace, rest, closed = _split_trace(text)
        raw = _answer_text(rest, multiline=task.kind == "text")
        # Without an answer line, fall back to what follows the trace (or the whole text if none was opened).
        fallback = rest if (closed or trace is None) else ""
        if task.kind == "rating":
            answer, raw_answer, reason = _rating(raw, fallback, task)
        elif task.kind == "label":
            answer, raw_answer, reason = _label(raw, fallback, task)
        elif task.kind == "ranking":
            answer, raw_answer, reason = _ranking(raw, fallback, list(candidates or []))
        else:
            answer, raw_answer, reason = _text(raw, fallback, fallback_allowed=bool(fallback.strip()))
        if answer is None and not text.strip():
            reason = "empty output"
        return ParsedOutput(trace=trace or None, answer=answer, raw_answer=raw_answer, reason=reason if answer is None else None)
    except Exception as error:  # noqa: BLE001 - the contract: model output never makes the parser raise
        return ParsedOutput(trace=None, answer=None, raw_answer=None, reason=f"parser error: {error!r}")


def _as_number(value: str) -> float | None:
    try:
        return float(value.strip().replace(",", "."))
    except (ValueError, AttributeError):
        numbers = _numbers(value or "")
        return numbers[0] if numbers else None


def is_correct(task: TaskSpec, predicted: str | None, gold: str) -> bool:
    """Exact label match (case-insensitive), |rating − gold| ≤ tolerance, candidate match, text equality."""
    if predicted is None:
        return False
    if task.kind == "rating":
        pred, ref = _as_number(predicted), _as_number(gold)
        if pred is None or ref is None:
            return False
        if task.integer:
            pred, ref = _round_half_up(pred), _round_half_up(ref)
        return abs(pred - ref) <= task.tolerance + 1e-9
    if task.kind == "label":
        return predicted.strip().lower() == gold.strip().lower()
    return normalize_text(predicted) == normalize_text(gold)
