"""Counts that describe a loaded source: users, items, and how they spread over users."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from prime_ray.data.schema import UserRecord


@dataclass(frozen=True)
class Spread:
    min: int
    median: float
    max: int

    @classmethod
    def of(cls, values: Sequence[int]) -> Spread:
        return cls(min(values), statistics.median(values), max(values)) if values else cls(0, 0, 0)

    def __str__(self) -> str:
        return f"min {self.min}, median {self.median:g}, max {self.max}"


@dataclass(frozen=True)
class SourceStats:
    users: int
    history_items: int
    queries: int
    history_per_user: Spread
    queries_per_user: Spread
    unlabelled_queries: int  # queries without an output (a split published without answers)
    top_outputs: list[tuple[str, int]]  # the most frequent outputs (labels, ratings), most frequent first
    distinct_outputs: int

    @property
    def items(self) -> int:
        return self.history_items + self.queries


def source_stats(users: Sequence[UserRecord], top: int = 10) -> SourceStats:
    outputs = Counter(item.output for user in users for item in (*user.history, *user.queries)
                      if item.output is not None)
    return SourceStats(
        users=len(users),
        history_items=sum(len(user.history) for user in users),
        queries=sum(len(user.queries) for user in users),
        history_per_user=Spread.of([len(user.history) for user in users]),
        queries_per_user=Spread.of([len(user.queries) for user in users]),
        unlabelled_queries=sum(query.output is None for user in users for query in user.queries),
        top_outputs=outputs.most_common(top),
        distinct_outputs=len(outputs),
    )
