"""The leakage check every source goes through: no query's input may sit in a history.

A query is what the job evaluates (a training user's held-out query or a held-out user's query); a
history is what it trains on (leave-one-out examples) and what memory is drawn from. A history item
whose input is a query's input, in any user's history (the query's own user's or another's), would
put that query, usually with its gold, on the training side: LaMP questions of one person share their
profiles, so one question's query sits, labelled, in the next question's profile. Such items are
removed from the history (never the query), and each removal is a located problem.

Inputs are compared by a hash of their normalised text (Unicode NFKC, case-folded, whitespace runs
collapsed). Within one user, the same input in the history and as a query always leaks. Across
users, when both items carry a timestamp and the timestamps differ, they are two events, not a copy:
every MovieLens user rates the same "Toy Story (1995)", each at their own time, and that is data,
while a rating copied with its timestamp into another user's history is found. On MovieLens-100K
the check finds only movies that the catalogue lists twice under two ids (e.g. "Chasing Amy (1997)",
items 246 and 268) rated by one user as both a history item and a query.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import defaultdict

from prime_ray.data.schema import Query
from prime_ray.data.validation import LoadResult, Problem

_SPACE = re.compile(r"\s+")


def normalised(text: str) -> str:
    """The text as the check compares it: NFKC, case-folded, whitespace runs as one space, stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_hash(text: str) -> str:
    """A 128-bit BLAKE2b hex digest of the normalised text."""
    return hashlib.blake2b(normalised(text).encode("utf-8"), digest_size=16).hexdigest()


def _leaks(item: Query, user_id: str, query: Query, owner: str) -> bool:
    """Whether a history item (of `user_id`) with a query's input (of `owner`) puts that query on the training side.

    The same user's item always does (the user's own answer to the same input, e.g. a movie listed
    twice in the catalogue). Another user's does unless both carry timestamps that differ: then they
    are two users' own events (two ratings of one movie), not a copy.
    """
    if owner == user_id:
        return True
    return item.timestamp is None or query.timestamp is None or item.timestamp == query.timestamp


def remove_leakage(result: LoadResult, file: str) -> LoadResult:
    """`result` with every history item that matches a query removed, a problem per item, and `leaks` set.

    `file` names the source in the problems (with the user's line where the reader knows it).
    """
    queries: dict[str, list[tuple[Query, str]]] = defaultdict(list)  # input hash -> (query, its user id)
    for user in result.users:
        for query in user.queries:
            queries[text_hash(query.input)].append((query, user.user_id))
    users, problems, leaks = [], list(result.problems), 0
    for user in result.users:
        kept = []
        for index, item in enumerate(user.history):
            match = next(((q, owner) for q, owner in queries.get(text_hash(item.input), ())
                          if _leaks(item, user.user_id, q, owner)), None)
            if match is None:
                kept.append(item)
                continue
            leaks += 1
            query, owner = match
            whose = "its own query" if owner == user.user_id else f"the query of user {owner!r}"
            line = result.item_lines.get((user.user_id, item.id))  # an item with a line of its own (MovieLens)
            problems.append(Problem(
                file, line or result.lines.get(user.user_id), "item_id" if line else f"history.{index}.input",
                f"user {user.user_id!r} item {item.id!r} has the input of {whose} {query.id!r}; "
                "removed from the history (a query must not be trained on)",
            ))
        users.append(user if len(kept) == len(user.history) else user.model_copy(update={"history": kept}))
    return dataclasses.replace(result, users=users, problems=problems, leaks=result.leaks + leaks)
