"""The native data model (one user per JSON line) and the training/evaluation example.

    {"user_id": "u17", "profile": {"age": 24},
     "history": [{"id": "h1", "input": "...", "output": "4", "timestamp": 881250949}],
     "queries": [{"id": "q1", "input": "...", "output": "5"}]}

Ranking items carry `candidates` (the answer is one of them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Every integer of the data is stored in a 64-bit Parquet column: a larger one is a row's problem, not a crash.
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Query(_Row):
    """A query to predict; its output may be unknown (a split published without answers).

    An unlabelled query (no `output`) is kept with its user, for prediction; it gives no evaluation
    example. History items are `Item`s, which always have an output.
    """

    # An Item given as a query becomes a Query, so a user read back from Parquet equals the user written.
    model_config = ConfigDict(extra="forbid", frozen=True, revalidate_instances="subclass-instances")

    id: str = Field(..., min_length=1)
    input: str = Field(..., min_length=1)
    output: str | None = Field(None, description="The gold output; absent for an unlabelled query.")
    timestamp: Int64 | None = None
    candidates: list[str] | None = Field(None, description="Ranking tasks: the options; `output` is one of them.")
    also_correct: list[str] | None = Field(
        None, description="Ranking items with several right answers: the other candidates that count as a hit.")

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

    @field_validator("also_correct")
    @classmethod
    def _also_correct_are_candidates(cls, also: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if also is None:
            return None
        candidates = info.data.get("candidates") or []
        wrong = [text for text in also if text not in candidates]
        if wrong:
            raise ValueError(f"{_short(wrong[0])} is not among the candidates")
        return also

    @property
    def golds(self) -> list[str]:
        """Every right answer: the output, then the other correct candidates."""
        return [self.output, *(self.also_correct or ())]


class Item(Query):
    """A past item of a user's history (or a labelled query): its output is known."""

    output: str = Field(..., description="The user's output: a rating, a label, a text, or the chosen candidate.")


class UserRecord(_Row):
    user_id: str = Field(..., min_length=1)
    profile: dict[str, Any] = Field(default_factory=dict)
    history: list[Item] = Field(default_factory=list)
    queries: list[Query] = Field(default_factory=list)


Split = Literal["train", "test_query", "test_user"]


class Example(_Row):
    """One row of `examples.parquet`: a query (or a left-out history item) with its memory pool.

    - `train`: leave-one-out on a training user's history: the item is the query, the rest is memory.
    - `test_query`: a held-out query of a training user; the whole history is memory.
    - `test_user`: a query of a held-out user (never trained on); the whole history is memory.
    """

    example_id: str  # examples.example_id(user_id, item id): unique, whatever the ids hold
    user_id: str
    split: Split
    input: str
    output: str
    candidates: list[str] | None = None
    also_correct: list[str] | None = None  # ranking: other candidates that count as a hit
    timestamp: int | None = None
    memory_ids: list[str]  # ids of the user's history items this example may draw memory from


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
