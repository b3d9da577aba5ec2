"""`memory/memory.parquet`: one row per example (every split) with its profile and retrieved episodes.

Read it only through `read_memory`. Episodes are stored as the history items' JSON, so the rows keep
everything a prompt needs (input, output, timestamp, candidates) without a join back to the users.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prime_ray.data.schema import Example, Item

MEMORY_FILE = "memory.parquet"

SCHEMA = pa.schema([
    pa.field("example_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("profile", pa.string()),  # the user's summary by the generalist; null when profiles are off
    pa.field("retriever", pa.string(), nullable=False),
    pa.field("episode_ids", pa.list_(pa.string()), nullable=False),
    pa.field("episodes", pa.list_(pa.string()), nullable=False),  # Item JSON, most relevant first
    pa.field("scores", pa.list_(pa.float64()), nullable=False),
])


@dataclass(frozen=True)
class ExampleMemory:
    profile: str | None
    episodes: tuple[Item, ...]
    scores: tuple[float, ...]


def write_memory(path: str | Path, entries: list[tuple[Example, ExampleMemory]], retriever: str) -> None:
    """One row per (example, its memory)."""
    table = pa.Table.from_pylist(
        [
            {
                "example_id": example.example_id,
                "user_id": example.user_id,
                "split": example.split,
                "profile": memory.profile,
                "retriever": retriever,
                "episode_ids": [item.id for item in memory.episodes],
                "episodes": [item.model_dump_json() for item in memory.episodes],
                "scores": list(memory.scores),
            }
            for example, memory in entries
        ],
        schema=SCHEMA,
    )
    pq.write_table(table, path)


def read_memory(path: str | Path) -> dict[str, ExampleMemory]:
    """example_id -> its memory. A file that is not a memory table is an error naming what is missing."""
    table = pq.read_table(path)
    missing = [name for name in ("example_id", "profile", "episodes", "scores") if name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a memory table, missing column(s) {', '.join(missing)}")
    out: dict[str, ExampleMemory] = {}
    for i, row in enumerate(table.select(["example_id", "profile", "episodes", "scores"]).to_pylist()):
        try:
            episodes = tuple(Item.model_validate_json(blob) for blob in row["episodes"])
        except ValueError as e:
            raise ValueError(f"{path}: row {i} ({row['example_id']}): bad episode: {e}") from None
        out[row["example_id"]] = ExampleMemory(row["profile"], episodes, tuple(row["scores"]))
    return out
