"""Non-LLM reference predictors, scored with the same metrics and intervals as the modes.

Each task kind names its references (`TaskKind.references`): for ratings the training users' mean and
most frequent rating, the user's own mean and the item's mean; for labels the majority label, the
user's and the item's most frequent label; for free text the user's latest text; none for ranking
(each query has its own candidates). A reference answers every example, so its parse rate is 1.

The outputs a reference may read are those a model could also have learned or seen: the history items
of the training users (the crowd), and the example's own user's history (their memory). Items are
matched by their input text, so the item reference exists only where items recur across users
(MovieLens); it is left out when no evaluated item was seen in the crowd, and an unseen item gets the
crowd's answer. No query output is ever read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prime_ray.evaluation.metrics import Outcome
from prime_ray.spec import TaskSpec
from prime_ray.tasks import task_kind

__all__ = ["REFERENCE_PREFIX", "ReferenceQuery", "reference_outcomes"]

REFERENCE_PREFIX = "ref:"


@dataclass(frozen=True)
class ReferenceQuery:
    """One evaluated example, as a reference sees it."""

    example_id: str
    gold: str
    item: str  # the item's key: its input text
    user_outputs: Sequence[str]  # the user's history outputs (their memory pool), oldest first


def reference_outcomes(
    task: TaskSpec, queries: Sequence[ReferenceQuery], crowd: Sequence[tuple[str, str]]
) -> dict[str, list[Outcome]]:
    """Per reference (`ref:<name>`), its outcome on every query, in query order.

    `crowd`: (item key, output) of every history item of the training users. A reference without an
    answer for an example (an empty user history) falls back to the crowd's answer.
    """
    references = task_kind(task).references(task)
    by_item: dict[str, list[str]] = defaultdict(list)
    for item, output in crowd:
        by_item[item].append(output)
    outputs = [output for _, output in crowd]
    seen = any(q.item in by_item for q in queries)
    out: dict[str, list[Outcome]] = {}
    for ref in references:
        if ref.scope == "item" and not seen:
            continue
        crowd_answer = ref.answer(task, outputs)
        outcomes = []
        for q in queries:
            own = q.user_outputs if ref.scope == "user" else by_item.get(q.item, ()) if ref.scope == "item" else None
            answer = ref.answer(task, own) if own else None
            outcomes.append(Outcome(q.example_id, q.gold, answer if answer is not None else crowd_answer, strict=True))
        out[REFERENCE_PREFIX + ref.name] = outcomes
    return out


def reference_descriptions(task: TaskSpec) -> Mapping[str, str]:
    """`ref:<name>` → what the reference answers, for the report's legend."""
    return {REFERENCE_PREFIX + r.name: r.description for r in task_kind(task).references(task)}
