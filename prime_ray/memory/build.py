"""Assemble each example's memory: its user's profile and its top-k episodes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from prime_ray.data.schema import Example, UserRecord
from prime_ray.memory.retrieval import Retriever
from prime_ray.memory.store import ExampleMemory


def build_memory(
    examples: Sequence[Example],
    users: dict[str, UserRecord],
    retriever: Retriever,
    top_k: int,
    profiles: dict[str, str],
) -> Iterator[tuple[Example, ExampleMemory]]:
    """Per example (grouped by user, one index per user): episodes among its memory_ids, best first.

    An example whose user is unknown, or whose memory ids are not in that user's history, is an error
    naming the example: the ingest stage wrote them together, so a mismatch means a broken input.
    """
    by_user: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_user[example.user_id].append(example)
    for user_id, user_examples in by_user.items():
        if user_id not in users:
            raise KeyError(f"example {user_examples[0].example_id}: user {user_id!r} is not in users.parquet")
        index = retriever.index(users[user_id].history)
        for example in user_examples:
            try:
                found = index.top_k(example.input, example.memory_ids, top_k)
            except KeyError as e:
                raise KeyError(f"example {example.example_id}: {e.args[0]}") from None
            yield example, ExampleMemory(profiles.get(user_id), found.items, found.scores)
