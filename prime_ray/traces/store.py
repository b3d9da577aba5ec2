"""`traces/traces.parquet`: every sampled trace with its verdicts and lineage; read kept ones here.

Columns: user_id, example_id, sample_index (-1: no trace sampled for the example), prompt (the
rationalization prompt), raw_text, trace, answer (the final answer parsed from the output),
answer_without_hint (what G answers from the trace alone, when that check is on), gold, kept, verdicts (one bool per filter), likelihood_gain, repetition,
direct_answer, direct_correct, generated_tokens, error, model, config_hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prime_ray.traces.filters import FILTERS

TRACES_FILE = "traces.parquet"

SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("example_id", pa.string(), nullable=False),
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("raw_text", pa.string()),
    pa.field("trace", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("answer_without_hint", pa.string()),
    pa.field("gold", pa.string()),
    pa.field("kept", pa.bool_(), nullable=False),
    pa.field("verdicts", pa.struct([pa.field(name, pa.bool_()) for name in FILTERS])),
    pa.field("likelihood_gain", pa.float64()),
    pa.field("repetition", pa.float64()),
    pa.field("direct_answer", pa.string()),
    pa.field("direct_correct", pa.bool_()),
    pa.field("generated_tokens", pa.int64(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("model", pa.string(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
])


@dataclass(frozen=True)
class KeptTrace:
    example_id: str
    user_id: str
    sample_index: int
    trace: str
    answer: str  # the gold answer the trace leads to (what the student learns after the trace)
    score: float  # likelihood gain log p(y | x, trace) − log p(y | x), in nats


def write_traces(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    pq.write_table(pa.Table.from_pylist(list(rows), schema=SCHEMA), path)


def read_kept_traces(path: str | Path) -> dict[str, list[KeptTrace]]:
    """example_id -> its kept traces, best score first."""
    table = pq.read_table(path, columns=["example_id", "user_id", "sample_index", "trace", "gold",
                                         "likelihood_gain", "kept"])
    out: dict[str, list[KeptTrace]] = {}
    for row in table.filter(table["kept"]).to_pylist():
        out.setdefault(row["example_id"], []).append(KeptTrace(
            example_id=row["example_id"],
            user_id=row["user_id"],
            sample_index=row["sample_index"],
            trace=row["trace"],
            answer=row["gold"],
            score=row["likelihood_gain"] if row["likelihood_gain"] is not None else 0.0,
        ))
    for traces in out.values():
        traces.sort(key=lambda t: (-t.score, t.sample_index))
    return out
