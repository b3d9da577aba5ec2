"""The task-kind registry: each kind of task (label, rating, text, ranking) is one object.

A kind says everything that differs between tasks, so no other module branches on `task.kind`:

    answer_instruction  the sentence that tells the model how to write the answer
    answer_tokens       new tokens enough for an answer line
    parse_answer        the answer written on an `Answer:` line (or found by a fallback), normalized
    is_correct          whether a parsed answer is right (trace verification, direct-answer statistics)
    output_problem      whether a data item's output fits the task (data validation)
    exact_answer        whether answers can be checked exactly (False: free text, ranked by likelihood gain)
    metric_names        the task metrics reported, primary first; `primary_metric` and its direction
    metrics             every task metric with its bootstrap interval, from `Outcome`s
    example_scores      the primary metric per example (its mean is the metric): the paired comparisons
    references          the non-LLM reference predictors (majority, the user's history, the item's mean)

Kinds register themselves with `register_task_kind`, as veRL registers its losses and advantage
estimators; `task_kind(task)` looks one up and raises `UnknownTaskKind` for a name it does not know.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from prime_ray.evaluation.metrics import LOWER_IS_BETTER, MetricValue, Outcome, bootstrap_interval

__all__ = ["Reference", "TaskKind", "UnknownTaskKind", "register_task_kind", "shown", "task_kind", "task_kinds"]

# (answer normalized for the task or None, the answer text as written or None, why there is no answer or None)
Parsed = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class Reference:
    """A non-LLM predictor, scored like a mode.

    `scope` says which outputs it summarizes: `crowd` (every history item of the training users),
    `user` (the example's own user's history), `item` (the training users' outputs for the same item,
    matched by its input text; the crowd's answer when the item was never seen). `answer(task, outputs)`
    turns those outputs into one answer (None when there are none).
    """

    name: str  # a slug: the report's row is `ref:<name>`
    scope: str  # "crowd" | "user" | "item"
    answer: Callable[[Any, Sequence[str]], str | None]
    description: str = ""


class UnknownTaskKind(ValueError):
    """A task kind that no registered `TaskKind` handles."""


class TaskKind:
    """The base class: subclasses set `name` and `primary_metric` and implement the methods."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]
    exact_answer: ClassVar[bool] = True
    multiline_answer: ClassVar[bool] = False  # the answer is a paragraph (free text), not one line

    @property
    def lower_is_better(self) -> bool:
        """The primary metric's direction."""
        return self.primary_metric in LOWER_IS_BETTER

    def answer_instruction(self, task) -> str:
        raise NotImplementedError

    def answer_tokens(self, task) -> int:
        raise NotImplementedError

    def parse_answer(self, task, raw: str | None, fallback: str, candidates: Sequence[str]) -> Parsed:
        """`raw`: the text after the answer marker (None without one); `fallback`: the text to search
        when there is no marker (may be empty)."""
        raise NotImplementedError

    def is_correct(self, task, predicted: str | None, gold: str) -> bool:
        raise NotImplementedError

    def output_problem(self, task, output: str, candidates: Sequence[str] | None) -> tuple[str, str] | None:
        """(field, message) when a data item's output does not fit the task; None when it does."""
        raise NotImplementedError

    def metric_names(self, task) -> list[str]:
        raise NotImplementedError

    def example_scores(self, task, outcomes: Sequence[Outcome]) -> dict[str, np.ndarray]:
        """Per-example values whose mean is a metric, for every metric that is such a mean."""
        raise NotImplementedError

    def metrics(self, task, outcomes: Sequence[Outcome], *, n_resamples: int, seed: int) -> dict[str, MetricValue]:
        """Every metric of `metric_names(task)` with its 95 % interval (the same resamples for all: same seed).

        The default serves kinds whose metrics are all means of `example_scores`.
        """
        scores = self.example_scores(task, outcomes)
        return {name: with_interval(len(outcomes), _mean_over(scores[name]), n_resamples, seed)
                for name in self.metric_names(task)}

    def references(self, task) -> tuple[Reference, ...]:
        return ()

    def metric_note(self, task) -> str | None:
        """A line the report adds under its tables to define a metric of this kind, if one needs it."""
        return None


def shown(value: Any) -> str:
    """A value as a message shows it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _mean_over(values: np.ndarray) -> Callable[[np.ndarray], float]:
    """The statistic: the mean of `values` at the given example indices."""
    return lambda idx: float(values[idx].mean())


def with_interval(n: int, statistic: Callable[[np.ndarray], float], n_resamples: int, seed: int) -> MetricValue:
    """`statistic` over all n examples, with its bootstrap interval over examples."""
    if n == 0:
        return MetricValue(None)
    value = statistic(np.arange(n))
    interval = bootstrap_interval(n, statistic, n_resamples=n_resamples, seed=seed)
    return MetricValue(value, *(interval or (None, None)))


_KINDS: dict[str, TaskKind] = {}
K = TypeVar("K", bound=type[TaskKind])


def register_task_kind(cls: K) -> K:
    """Class decorator: register one instance of `cls` under `cls.name` (a second class of a name is an error)."""
    if cls.name in _KINDS and type(_KINDS[cls.name]) is not cls:
        raise ValueError(f"task kind {cls.name!r} is already registered by {type(_KINDS[cls.name]).__name__}")
    _KINDS[cls.name] = cls()
    return cls


def task_kinds() -> list[str]:
    return sorted(_KINDS)


def task_kind(task: Any) -> TaskKind:
    """The kind of a task spec (or a kind's name); `UnknownTaskKind` names the known ones when absent."""
    name = task if isinstance(task, str) else getattr(task, "kind", None)
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise UnknownTaskKind(f"unknown task kind {name!r}; known kinds: {', '.join(task_kinds())}")
    return kind
