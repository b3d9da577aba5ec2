"""Tasks derived from a source's ratings, and the user filters that choose whose taste is their own.

MovieLens's `liked` task: the reader gives the 1–5 ratings (validated as ratings), then every output
becomes `yes` (rating ≥ 4) or `no`: "will this user like this movie?". Answering it well takes this
user's taste, not the crowd's: a user's like-rate varies far more between users than a movie's mean
rating varies between movies.

User filters (`data.source` options, applied before `max_users` picks users):
- `min_ratings`: at least this many ratings (history and queries together);
- `min_like_rate_distance`: |the user's like-rate − the crowd's| ≥ this. Both rates are computed on
  history items only, so the queries — what is evaluated — never decide who is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

from prime_ray.data.schema import Item, Query, UserRecord
from prime_ray.data.validation import LoadResult
from prime_ray.spec import MovieLensSource

__all__ = ["LIKED_MIN_RATING", "derive_movielens", "like_rate", "liked_label"]

LIKED_MIN_RATING = 4.0  # "liked": a rating of 4 or 5 on MovieLens's 1–5 scale
Q = TypeVar("Q", bound=Query)


def liked_label(rating: str) -> str:
    return "yes" if float(rating) >= LIKED_MIN_RATING else "no"


def like_rate(items: Sequence[Item]) -> float | None:
    """Share of the items rated ≥ 4 (None without items)."""
    return sum(float(i.output) >= LIKED_MIN_RATING for i in items) / len(items) if items else None


def _liked(user: UserRecord) -> UserRecord:
    def relabel(items: Sequence[Q]) -> list[Q]:
        # MovieLens queries are ratings, so every item has an output; an unlabelled one would stay so
        return [item.model_copy(update={"output": None if item.output is None else liked_label(item.output)})
                for item in items]

    return user.model_copy(update={"history": relabel(user.history), "queries": relabel(user.queries)})


def derive_movielens(loaded: LoadResult, source: MovieLensSource) -> LoadResult:
    """Apply the source's user filters to rating users, then (task `liked`) relabel their items.

    `loaded` holds ratings as outputs (the rating task's reading), except for the genre task, where
    only `min_ratings` applies.
    """
    users = [u for u in loaded.users if len(u.history) + len(u.queries) >= source.min_ratings]
    if source.min_like_rate_distance > 0:
        crowd = like_rate([item for u in loaded.users for item in u.history])
        # a user with a rate has history items, so the crowd has a rate too
        users = [u for u in users if (rate := like_rate(u.history)) is not None and crowd is not None
                 and abs(rate - crowd) >= source.min_like_rate_distance]
    if source.task == "liked":
        users = [_liked(u) for u in users]
    return dataclasses.replace(loaded, users=users)  # problems, notes and line numbers stay
