"""Conversation threads for ranking (Change-My-View-like data): JSON Lines, one author per line.

    {"author": "a17", "profile": {"flair": "Δ 3"},
     "threads": [{"id": "t1", "post": "CMV: ...", "timestamp": 1420070400,
                  "replies": [{"text": "...", "persuasive": true}, {"text": "..."}]}],
     "queries": [{"id": "q1", "post": "CMV: ...",
                  "replies": [{"id": "r9", "text": "..."}, {"id": "r4", "text": "...", "persuasive": true}]}]}

`threads` are the author's past threads (their history), `queries` the threads to predict. Every
thread has at least two replies with distinct texts, exactly one marked persuasive. A thread becomes
an item whose input is the post, whose candidates are the reply texts in file order, and whose output
is the persuasive reply's text (the answer to a ranking task is a candidate's text, see schema.Item).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prime_ray.data.jsonl import json_lines
from prime_ray.data.validation import LoadResult, RowValidator, describe_error
from prime_ray.spec import TaskSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reply(_Strict):
    id: str | None = Field(None, description="The source's own reply id (kept out of the native item).")
    text: str = Field(..., min_length=1)
    persuasive: bool = False


class Thread(_Strict):
    id: str = Field(..., min_length=1)
    post: str = Field(..., min_length=1)
    timestamp: int | None = None
    replies: list[Reply]

    @field_validator("replies")
    @classmethod
    def _one_persuasive(cls, replies: list[Reply]) -> list[Reply]:
        if len(replies) < 2:
            raise ValueError(f"a thread needs at least 2 replies to rank, got {len(replies)}")
        marked = sum(reply.persuasive for reply in replies)
        if marked != 1:
            raise ValueError(f"exactly one reply must be marked persuasive, found {marked}")
        if len({reply.text for reply in replies}) != len(replies):
            raise ValueError("reply texts must be distinct (the answer is a reply's text)")
        return replies

    def to_item(self) -> dict[str, Any]:
        chosen = next(reply.text for reply in self.replies if reply.persuasive)
        return {
            "id": self.id,
            "input": self.post,
            "output": chosen,
            "timestamp": self.timestamp,
            "candidates": [reply.text for reply in self.replies],
        }


class Author(_Strict):
    author: str = Field(..., min_length=1)
    profile: dict[str, Any] = Field(default_factory=dict)
    threads: list[Thread] = Field(default_factory=list)
    queries: list[Thread] = Field(default_factory=list)

    def to_user(self) -> dict[str, Any]:
        return {
            "user_id": self.author,
            "profile": self.profile,
            "history": [thread.to_item() for thread in self.threads],
            "queries": [thread.to_item() for thread in self.queries],
        }


_NATIVE_TO_THREADS = {"user_id": "author", "history": "threads", "input": "post", "output": "replies", "candidates": "replies"}


def _thread_path(native: str) -> str:
    """`history.2.output` -> `threads.2.replies`: where a native item's field comes from in a thread."""
    return ".".join(_NATIVE_TO_THREADS.get(part, part) for part in native.split(".")[:3])


def read_threads(path: str | Path, task: TaskSpec | None = None) -> LoadResult:
    """Read a threads file: one native user per valid author line, a problem per bad line."""
    validator = RowValidator(str(path), task, rename=_thread_path)
    for number, document in json_lines(path, validator):
        try:
            author = Author.model_validate(document)
        except ValidationError as e:
            for error in e.errors():
                validator.problem(number, *describe_error(error))
            continue
        validator.add(author.to_user(), line=number)
    return validator.result
