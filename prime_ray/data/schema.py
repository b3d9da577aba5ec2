"""The native data model (one user per JSON line) and the training/evaluation example.

    {"user_id": "u17", "profile": {"age": 24},
     "history": [{"id": "h1", "input": "...", "output": "4", "timestamp": 881250949}],
     "queries": [{"id": "q1", "input": "...", "output": "5"}]}

Ranking items carry `candidates` (the answer is one of them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Item(_Row):
    """A past item of a user's history, or a query to predict."""

    id: str = Field(..., min_length=1)
    input: str = Field(..., min_length=1)
    output: str = Field(..., description="The user's output: a rating, a label, a text, or the chosen candidate.")
    timestamp: int | None = None
    candidates: list[str] | None = Field(None, description="Ranking tasks: the options; `output` is one of them.")

    @field_validator("candidates")
    @classmethod
    def _output_is_a_candidate(cls, candidates: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # A ranking item whose answer is not among its options can never be scored: reject it at the row.
        if candidates is None:
            return None
        if not candidates:
            raise ValueError("must not be empty (leave it out for items that are not ranked)")
        if len(set(candidates)) != len(candidates):
            raise ValueError("candidates must be distinct")
        output = info.data.get("output")
        if output is not None and output not in candidates:
            raise ValueError(f"the output {_short(output)} is not among the {len(candidates)} candidates")
        return candidates


class UserRecord(_Row):
    user_id: str = Field(..., min_length=1)
    profile: dict[str, Any] = Field(default_factory=dict)
    history: list[Item] = Field(default_factory=list)
    queries: list[Item] = Field(default_factory=list)


Split = Literal["train", "test_query", "test_user"]


class Example(_Row):
    """One row of `examples.parquet`: a query (or a left-out history item) with its memory pool.

    - `train`: leave-one-out on a training user's history: the item is the query, the rest is memory.
    - `test_query`: a held-out query of a training user; the whole history is memory.
    - `test_user`: a query of a held-out user (never trained on); the whole history is memory.
    """

    example_id: str  # f"{user_id}/{item id}"
    user_id: str
    split: Split
    input: str
    output: str
    candidates: list[str] | None = None
    timestamp: int | None = None
    memory_ids: list[str]  # ids of the user's history items this example may draw memory from


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
