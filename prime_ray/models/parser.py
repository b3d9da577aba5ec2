"""The one output parser: trace and answer from generated text. Never raises on malformed text.

Small models write malformed output often, so the parser is lenient where the intent is clear and
says why (`reason`) where it is not:
- the trace is the text inside `<think>…</think>`; an unclosed block ends at the answer line;
- the answer is the first `Answer:` line after the trace (markdown, case and "Final answer" allowed;
  text after it is ignored) that is not an echoed placeholder: a value wrapped whole in parentheses or
  angle brackets ("Answer: (a whole number from 1 to 5)", "Answer: <answer>") followed by another
  answer line is the prompt's format repeated, not an answer. Such an answer is *strict*;
- without an answer line, the task kind's fallback looks at the end of the text (`strict` False);
- the answer is normalized by the task kind (`prime_ray.tasks`): a label of the set (its spelling), a
  number ("4", "3.5"), a candidate's text, or the text itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from prime_ray.evaluation.metrics import normalize_label, normalize_text
from prime_ray.spec import TaskSpec
from prime_ray.tasks import task_kind

__all__ = ["ParsedOutput", "is_correct", "normalize_label", "normalize_text", "parse_output"]


@dataclass(frozen=True)
class ParsedOutput:
    trace: str | None  # the text inside <think>…</think>, if any
    answer: str | None  # the answer normalized for the task (a label of the set, "4", a candidate), None if unparseable
    raw_answer: str | None  # the answer text as written
    reason: str | None  # why no answer could be parsed (None when `answer` is set)
    strict: bool = False  # the answer was written on an `Answer:` line (False: found by the fallback, or none)
    answer_line: bool = False  # an `Answer:` line follows the trace, whether or not its value could be read

    @property
    def ok(self) -> bool:
        return self.answer is not None


_THINK_OPEN = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
# "Answer:", "**Answer:**", "Final answer -", "ANSWER：" at the start of a line or after a sentence.
_ANSWER = re.compile(r"(?:^|(?<=[\s*#>_.]))(?:final\s+)?answer\s*\**\s*[:：]\s*\**", re.IGNORECASE | re.MULTILINE)
# A value that is a format placeholder, not an answer: "(a whole number from 1 to 5)", "<answer>".
_PLACEHOLDER = re.compile(r"^[\s*_`]*(?:\([^()]*[A-Za-z][^()]*\)|<[^<>]*[A-Za-z][^<>]*>)[\s*_`.]*$")


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


def _value_after(rest: str, match: re.Match, multiline: bool) -> str:
    after = rest[match.end() :].lstrip(" \t")
    if after.startswith(("\n", "\r")) or not after.strip():  # "Answer:\n4": the value is on the next line
        after = after.lstrip()
    if multiline:
        return re.split(r"\n\s*\n", after.strip(), maxsplit=1)[0].strip() if after.strip() else ""
    return after.split("\n", 1)[0].strip()


def _answer_text(rest: str, multiline: bool) -> str | None:
    """The value of the first answer line that is not an echoed placeholder; None if there is no marker."""
    matches = list(_ANSWER.finditer(rest))
    if not matches:
        return None
    for match, following in zip(matches, matches[1:]):
        value = _value_after(rest, match, multiline)
        # A placeholder counts as one only when a real answer line follows it; a lone "(4)" is an answer.
        if not (_PLACEHOLDER.match(value) and "\n" in rest[match.end() : following.start()]):
            return value
    return _value_after(rest, matches[-1], multiline)


def parse_output(text: str, task: TaskSpec, candidates: Sequence[str] | None = None) -> ParsedOutput:
    """Trace and normalized answer from generated text; `reason` says why when there is no answer.

    Any input gives a `ParsedOutput` (non-text input is read as its `str`); it never raises.
    """
    try:
        kind = task_kind(task)
        text = text if isinstance(text, str) else ("" if text is None else str(text))
        trace, rest, closed = _split_trace(text)
        raw = _answer_text(rest, multiline=kind.multiline_answer)
        # Without an answer line, fall back to what follows the trace (or the whole text if none was opened).
        fallback = rest if (closed or trace is None) else ""
        answer, raw_answer, reason = kind.parse_answer(task, raw, fallback, list(candidates or []))
        if answer is None and not text.strip():
            reason = "empty output"
        return ParsedOutput(trace=trace or None, answer=answer, raw_answer=raw_answer,
                            reason=reason if answer is None else None, strict=answer is not None and raw is not None,
                            answer_line=raw is not None)
    except Exception as error:  # noqa: BLE001 - the contract: model output never makes the parser raise
        return ParsedOutput(trace=None, answer=None, raw_answer=None, reason=f"parser error: {error!r}")


def is_correct(task: TaskSpec, predicted: str | None, gold: str) -> bool:
    """The task kind's verdict: the same label (`normalize_label`), |rating − gold| ≤ tolerance, the same
    candidate, the same text (`normalize_text`). An unparsed prediction (None) is never correct."""
    return task_kind(task).is_correct(task, predicted, gold)
