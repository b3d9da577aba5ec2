"""The one output parser: trace and answer from generated text. Never raises on malformed text.
(Interface; the model-layer work fills it in.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from prime_ray.spec import TaskSpec


@dataclass(frozen=True)
class ParsedOutput:
    trace: str | None  # the text inside <think>…</think>, if any
    answer: str | None  # the answer normalized for the task (a label of the set, "4", a candidate), None if unparseable
    raw_answer: str | None  # the answer text as written
    reason: str | None  # why no answer could be parsed (None when `answer` is set)

    @property
    def ok(self) -> bool:
        return self.answer is not None


def parse_output(text: str, task: TaskSpec, candidates: Sequence[str] | None = None) -> ParsedOutput:
    raise NotImplementedError


def is_correct(task: TaskSpec, predicted: str | None, gold: str) -> bool:
    """Exact label match (case-insensitive), |rating − gold| ≤ tolerance, candidate match, text equality."""
    raise NotImplementedError
