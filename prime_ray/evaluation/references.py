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

from prime_ray.data.schema import Example, UserRecord
from prime_ray.evaluation.metrics import Outcome
from prime_ray.spec import TaskSpec
from prime_ray.tasks import task_kind

__all__ = ["REFERENCE_PREFIX", "ReferenceQuery", "outcomes_by_split", "reference_descriptions", "reference_outcomes"]

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



def outcomes_by_split(task: TaskSpec, by_split: Mapping[str, Sequence[Example]], users: Mapping[str, UserRecord],
                      roles: Mapping[str, str]) -> dict[str, dict[str, list[Outcome]]]:
    """split → reference (`ref:<name>`) → its outcomes on that split's examples.

    `by_split`: split → its evaluated examples (`example_id`, `user_id`, `input`, `output`, `memory_ids`);
    `users`: user id → the user (`history` of items with `id`, `input`, `output`, oldest first);
    `roles`: user id → "train" | "test_user". The crowd is the training users' history; a user's own
    outputs are the history items of the example's memory pool (`memory_ids`).
    """
    crowd = [(item.input, item.output) for uid, user in users.items() if roles.get(uid) == "train"
             for item in user.history]
    out = {}
    for split, examples in by_split.items():
        queries = []
        for e in examples:
            user = users.get(e.user_id)
            allowed = set(e.memory_ids)
            own = [item.output for item in (user.history if user else ()) if item.id in allowed]
            queries.append(ReferenceQuery(e.example_id, e.output, e.input, own))
        out[split] = reference_outcomes(task, queries, crowd)
    return out
