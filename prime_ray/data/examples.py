"""The example builder: users in, the job's users (with roles) and its examples out. Deterministic for a seed.

1. `max_users`: a seeded choice of users; `max_history`: each user keeps their latest n history items
   (by timestamp when every item has one, else the last n in file order).
2. Users are split into training users and held-out users (`split.held_out_users`, seeded; with two
   or more users and a non-zero share, at least one of each).
3. Training users give `train` examples, leave-one-out: each history item is a query whose memory
   pool is the rest of that user's history, earlier and later items alike, as in the method
   (a user's memory at test time is their whole history; the memory stage picks episodes from the
   pool). `max_train_examples_per_user` keeps a seeded choice of them. Their queries are `test_query`
   examples, with the whole history as memory.
4. Held-out users give only `test_user` examples (their queries, whole history as memory): the
   student never trains on them.
5. Unlabelled queries (no output: a split published without answers) stay with their user in
   users.parquet, for prediction, and give no example: nothing could score them.
6. `balance_labels` (label tasks): in each split, every label present keeps as many examples as the
   rarest one has (a seeded choice), so a constant answer scores 1 / labels. Dropped training examples
   stay in their user's history (and memory); dropped queries are simply not asked.

Example ids are `example_id(user, item)`: the two ids joined by `/`, each with `%` and `/`
percent-escaped, so no two (user, item) pairs share an id (`a/b` + `c` is `a%2Fb/c`, `a` + `b/c` is
`a/b%2Fc`) and memory, traces and predictions joined by id always belong to their own user.

Every random choice has its own stream (`random.Random(derive_seed(seed, "<what>"))`), so changing one knob
does not reshuffle the others, and user ids are sorted before any choice, so the file's row order
does not matter.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prime_ray.data.schema import Example, Item, Query, Split, UserRecord
from prime_ray.evaluation.metrics import normalize_label
from prime_ray.spec import DataSpec, derive_seed

Role = Literal["train", "test_user"]


@dataclass(frozen=True)
class ExampleSet:
    users: list[UserRecord]  # the users the job uses, as it uses them (history cut to max_history)
    roles: dict[str, Role]
    examples: list[Example]

    def count(self, split: str) -> int:
        return sum(example.split == split for example in self.examples)

    @property
    def unlabelled_queries(self) -> int:
        """Queries without an output among the users kept: kept for prediction, no example."""
        return sum(query.output is None for user in self.users for query in user.queries)


def latest(items: Sequence[Item], n: int | None) -> list[Item]:
    """The latest n items, oldest first: by timestamp when all have one, else the last n as given."""
    items = list(items)
    stamped = [(item.timestamp, item) for item in items if item.timestamp is not None]
    if len(stamped) == len(items):  # every item has a timestamp
        items = [item for _, item in sorted(stamped, key=lambda pair: pair[0])]
    return items if n is None else items[-n:]


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("/", "%2F")


def example_id(user_id: str, item_id: str) -> str:
    """`user/item`, each part with `%` and `/` escaped: distinct (user, item) pairs never share an id."""
    return f"{_escape(user_id)}/{_escape(item_id)}"


def _example(user: UserRecord, item: Query, split: Split, memory: list[str]) -> Example:
    assert item.output is not None, "an unlabelled query gives no example (`_labelled` leaves it out)"
    return Example(
        example_id=example_id(user.user_id, item.id),
        user_id=user.user_id,
        split=split,
        input=item.input,
        output=item.output,
        candidates=item.candidates,
        also_correct=item.also_correct,
        timestamp=item.timestamp,
        memory_ids=memory,
    )


def held_out_count(users: int, share: float) -> int:
    """How many users are held out: the share, rounded, but at least one of each role when possible."""
    count = round(users * share)
    if share > 0 and users >= 2:
        count = min(max(count, 1), users - 1)
    return count


def build_examples(users: Sequence[UserRecord], data: DataSpec, seed: int) -> ExampleSet:
    ids = sorted(user.user_id for user in users)
    if data.max_users is not None and len(ids) > data.max_users:
        ids = sorted(random.Random(derive_seed(seed, "users")).sample(ids, data.max_users))
    kept = set(ids)
    chosen = [user for user in users if user.user_id in kept]
    if data.max_history is not None:
        chosen = [user.model_copy(update={"history": latest(user.history, data.max_history)}) for user in chosen]

    shuffled = list(ids)
    random.Random(derive_seed(seed, "split")).shuffle(shuffled)
    held_out = set(shuffled[: held_out_count(len(shuffled), data.split.held_out_users)])
    roles: dict[str, Role] = {user.user_id: "test_user" if user.user_id in held_out else "train" for user in chosen}

    examples: list[Example] = []
    for user in chosen:
        history_ids = [item.id for item in user.history]
        if roles[user.user_id] == "test_user":
            examples += [_example(user, query, "test_user", history_ids) for query in _labelled(user)]
            continue
        positions: Sequence[int] = range(len(user.history))
        limit = data.max_train_examples_per_user
        if limit is not None and len(positions) > limit:
            positions = sorted(random.Random(derive_seed(seed, "train", user.user_id)).sample(positions, limit))
        for i in positions:
            memory = history_ids[:i] + history_ids[i + 1:]
            examples.append(_example(user, user.history[i], "train", memory))
        examples += [_example(user, query, "test_query", history_ids) for query in _labelled(user)]
    if data.balance_labels:
        examples = balance_labels(examples, seed)
    return ExampleSet(users=chosen, roles=roles, examples=examples)


def balance_labels(examples: Sequence[Example], seed: int) -> list[Example]:
    """Per split, the same number of examples of every label present (the rarest label's count).

    Labels are compared in `normalize_label` form; which examples stay is a seeded choice per split and
    label, made on examples sorted by id (so the input order does not matter); the order is kept.
    """
    keep: set[int] = set()  # positions in `examples`
    for split in sorted({e.split for e in examples}):
        by_label: dict[str, list[int]] = {}
        for i in sorted((i for i, e in enumerate(examples) if e.split == split), key=lambda i: examples[i].example_id):
            by_label.setdefault(normalize_label(examples[i].output), []).append(i)
        size = min(len(group) for group in by_label.values())
        for label, group in sorted(by_label.items()):
            keep.update(random.Random(derive_seed(seed, "balance", split, label)).sample(group, size))
    return [e for i, e in enumerate(examples) if i in keep]


def _labelled(user: UserRecord) -> list[Query]:
    return [query for query in user.queries if query.output is not None]
