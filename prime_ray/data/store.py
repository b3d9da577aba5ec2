"""The ingest stage's Parquet files, and the only code that reads or writes them.

`users.parquet`: one row per user (user_id, role, profile as JSON text, history and queries as lists
of item structs). `examples.parquet`: one row per example (schema.Example). Profiles are JSON text
because their fields differ between sources and Parquet columns need one type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prime_ray.data.schema import Example, UserRecord
from prime_ray.files import atomic_path

ITEM = pa.struct([
    ("id", pa.string()),
    ("input", pa.string()),
    ("output", pa.string()),
    ("timestamp", pa.int64()),
    ("candidates", pa.list_(pa.string())),
    ("also_correct", pa.list_(pa.string())),
])

USERS_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("role", pa.string()),
    ("profile", pa.string()),
    ("history", pa.list_(ITEM)),
    ("queries", pa.list_(ITEM)),
])

EXAMPLES_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("user_id", pa.string()),
    ("split", pa.string()),
    ("input", pa.string()),
    ("output", pa.string()),
    ("candidates", pa.list_(pa.string())),
    ("also_correct", pa.list_(pa.string())),
    ("timestamp", pa.int64()),
    ("memory_ids", pa.list_(pa.string())),
])


def _write(path: str | Path, rows: Iterable[dict], schema: pa.Schema) -> None:
    with atomic_path(path) as tmp:  # a reader never sees half a file
        pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), tmp)


def write_users(path: str | Path, users: list[UserRecord], roles: Mapping[str, str]) -> None:
    """`roles` maps every user id to "train" or "test_user"."""
    missing = [user.user_id for user in users if user.user_id not in roles]
    if missing:
        raise ValueError(f"no role for user(s) {', '.join(missing[:5])}")
    _write(path, (
        {
            "user_id": user.user_id,
            "role": roles[user.user_id],
            "profile": json.dumps(user.profile, sort_keys=True, ensure_ascii=False),
            "history": [item.model_dump() for item in user.history],
            "queries": [item.model_dump() for item in user.queries],
        }
        for user in users
    ), USERS_SCHEMA)


def read_users(path: str | Path) -> dict[str, UserRecord]:
    """user_id -> UserRecord, in file order."""
    table = pq.read_table(path, columns=["user_id", "profile", "history", "queries"])
    return {
        row["user_id"]: UserRecord.model_validate({**row, "profile": json.loads(row["profile"])})
        for row in table.to_pylist()
    }


def read_user_roles(path: str | Path) -> dict[str, str]:
    """user_id -> "train" | "test_user"."""
    table = pq.read_table(path, columns=["user_id", "role"])
    return dict(zip(table.column("user_id").to_pylist(), table.column("role").to_pylist()))


def write_examples(path: str | Path, examples: list[Example]) -> None:
    _write(path, (example.model_dump() for example in examples), EXAMPLES_SCHEMA)


def read_examples(path: str | Path, split: str | None = None) -> list[Example]:
    """Examples in file order; only those of `split` when it is given."""
    filters = [("split", "=", split)] if split is not None else None
    table = pq.read_table(path, filters=filters)
    return [Example.model_validate(row) for row in table.to_pylist()]
