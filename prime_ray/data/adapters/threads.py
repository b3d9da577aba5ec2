"""Conversation threads for ranking (Change-My-View-like data): JSON Lines, one author per line.

    {"author": "a17", "profile": {"flair": "Δ 3"},
     "threads": [{"id": "t1", "post": "CMV: ...", "timestamp": 1420070400,
                  "replies": [{"text": "...", "persuasive": true}, {"text": "..."}]}],
     "queries": [{"id": "q1", "post": "CMV: ...",
                  "replies": [{"id": "r9", "text": "..."}, {"id": "r4", "text": "...", "persuasive": true}]}]}

`threads` are the author's past threads (their history), `queries` the threads to predict. Threads
are taken as they are in Change My View:

- HTML entities are unescaped, repeatedly (Reddit dumps escape twice: `&amp;amp;` is `&`);
- replies whose body was deleted or removed (`[deleted]`, `[removed]`, empty) are dropped;
- one or more replies may be marked persuasive (a poster often awards several deltas).

A thread becomes an item whose input is the post, whose candidates are the remaining reply texts in
file order, whose output is the first persuasive reply's text and whose `also_correct` lists the
other persuasive replies (any of them is a hit for Hit@k and MRR). A thread that is left with fewer
than two candidates or none persuasive, or is malformed, is reported and skipped on its own; the
author's other threads are kept. Only a malformed author line (no author, an unknown field) is
skipped whole.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prime_ray.data.jsonl import json_lines
from prime_ray.data.schema import Int64
from prime_ray.data.text import find_not_utf8
from prime_ray.data.validation import LoadResult, RowValidator, describe_error
from prime_ray.spec import TaskSpec

DELETED_BODIES = frozenset({"[deleted]", "[removed]", ""})  # what Reddit leaves of a withdrawn body


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reply(_Strict):
    id: str | None = Field(None, description="The source's own reply id (kept out of the native item).")
    text: str
    persuasive: bool = False


class Thread(_Strict):
    id: str = Field(..., min_length=1)
    post: str = Field(..., min_length=1)
    timestamp: Int64 | None = None
    replies: list[Reply]


class Author(_Strict):
    author: str = Field(..., min_length=1)
    profile: dict[str, Any] = Field(default_factory=dict)
    threads: list[Any] = Field(default_factory=list)  # validated one by one: a bad thread costs only itself
    queries: list[Any] = Field(default_factory=list)


def unescape(text: str) -> str:
    """HTML entities unescaped until none is left (at most 3 rounds), then stripped."""
    for _ in range(3):
        plain = html.unescape(text)
        if plain == text:
            break
        text = plain
    return text.strip()


def thread_item(thread: Thread) -> tuple[dict[str, Any] | None, str]:
    """The native item of a thread, or (None, why it cannot be ranked)."""
    post = unescape(thread.post)
    if post in DELETED_BODIES:
        return None, "post: the post was deleted"
    replies = [(unescape(reply.text), reply.persuasive) for reply in thread.replies]
    kept = [(text, persuasive) for text, persuasive in replies if text not in DELETED_BODIES]
    texts = [text for text, _ in kept]
    dropped = len(replies) - len(kept)
    note = f" after dropping {dropped} deleted" if dropped else ""
    if len(kept) < 2:
        return None, f"replies: a thread needs at least 2 replies to rank, got {len(kept)}{note}"
    if len(set(texts)) != len(texts):
        return None, "replies: reply texts must be distinct (the answer is a reply's text)"
    persuasive = [text for text, chosen in kept if chosen]
    if not persuasive:
        return None, f"replies: no reply is marked persuasive{note}"
    return {
        "id": thread.id,
        "input": post,
        "output": persuasive[0],
        "also_correct": persuasive[1:] or None,
        "timestamp": thread.timestamp,
        "candidates": texts,
    }, ""


_NATIVE_TO_THREADS = {"user_id": "author", "history": "threads", "input": "post", "output": "replies",
                      "candidates": "replies", "also_correct": "replies"}


def _thread_path(native: str) -> str:
    """`history.2.output` -> `threads.2.replies`: where a native item's field comes from in a thread."""
    return ".".join(_NATIVE_TO_THREADS.get(part, part) for part in native.split(".")[:3])


def read_threads(path: str | Path, task: TaskSpec | None = None) -> LoadResult:
    """Read a threads file: one native user per valid author line, a problem per bad line or thread."""
    validator = RowValidator(str(path), task, rename=_thread_path)
    for number, document in json_lines(path, validator):
        if not isinstance(document, dict):
            validator.add(document, line=number)  # reports it
            continue
        found = find_not_utf8({key: value for key, value in document.items() if key not in ("threads", "queries")})
        if found is not None:
            validator.problem(number, *found)
            continue
        try:
            author = Author.model_validate(document)
        except ValidationError as e:
            for error in e.errors():
                validator.problem(number, *describe_error(error))
            continue
        parts: dict[str, list[dict[str, Any]]] = {"threads": [], "queries": []}
        seen: dict[str, str] = {}
        for part, threads in (("threads", author.threads), ("queries", author.queries)):
            for index, raw in enumerate(threads):
                where = f"{part}.{index}"
                found = find_not_utf8(raw, where)
                if found is not None:
                    validator.problem(number, *found)
                    continue
                try:
                    thread = Thread.model_validate(raw)
                except ValidationError as e:
                    for error in e.errors():
                        field, message = describe_error(error)
                        validator.problem(number, f"{where}.{field}" if field else where, message)
                    continue
                item, why = thread_item(thread)
                if item is None:
                    field, _, message = why.partition(": ")
                    validator.problem(number, f"{where}.{field}", message)
                elif thread.id in seen:
                    validator.problem(number, f"{where}.id", f"duplicate thread id {thread.id!r} (also {seen[thread.id]})")
                else:
                    seen[thread.id] = where
                    parts[part].append(item)
        if (author.threads or author.queries) and not (parts["threads"] or parts["queries"]):
            continue  # every thread was reported: nothing of this author is left
        user = {"user_id": author.author, "profile": author.profile,
                "history": parts["threads"], "queries": parts["queries"]}
        validator.add(user, line=number)
    return validator.result
