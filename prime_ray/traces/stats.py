"""The statistics of a trace synthesis run, from its rows (so a resumed run counts every user)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from prime_ray.spec import TaskSpec, TraceFilters
from prime_ray.traces.filters import applied_filters, survivors_after_each


def gain_distribution(gains: Sequence[float]) -> dict[str, float | int | None]:
    """The likelihood gains log p(y|x,trace) − log p(y|x) (nats) of a set of traces, summarized.

    n, mean, the 10th / 50th / 90th percentiles (numpy's linear interpolation) and the share above 0
    (traces that make the gold answer more likely); the numbers are None when there is no trace.
    """
    values = np.asarray(gains, dtype=float)
    if not len(values):
        return {"n": 0, "mean": None, "p10": None, "median": None, "p90": None, "share_positive": None}
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"n": int(len(values)), "mean": round(float(values.mean()), 4), "p10": round(float(p10), 4),
            "median": round(float(p50), 4), "p90": round(float(p90), 4),
            "share_positive": round(float((values > 0).mean()), 4)}


def trace_stats(rows: Sequence[dict[str, Any]], task: TaskSpec, filters: TraceFilters) -> tuple[dict[str, int], dict[str, Any]]:
    """(counts, metrics): examples, traces generated, the survivors after each filter, kept, tokens."""
    examples: dict[str, dict[str, Any]] = {}
    for row in rows:
        examples.setdefault(row["example_id"], row)
    generated = [r for r in rows if r["raw_text"] is not None]
    judged = [r["verdicts"] for r in generated if r["verdicts"] is not None]
    direct = [r["direct_correct"] for r in examples.values() if r["direct_correct"] is not None]
    order = applied_filters(task, filters)
    funnel = survivors_after_each(judged, order)
    kept = sum(1 for r in rows if r["kept"])
    counts = {
        "users": len({r["user_id"] for r in rows}),
        "examples": len(examples),
        "examples_with_kept_trace": len({r["example_id"] for r in rows if r["kept"]}),
        "examples_direct_correct": sum(direct),
        "examples_skipped": sum(1 for r in rows if r["sample_index"] < 0 and r["error"] is None),
        "traces_generated": len(generated),
        "errors": sum(1 for r in rows if r["error"] is not None),
        **{f"after_{name}": n for name, n in funnel.items()},
        "kept": kept,
        "tokens_generated": sum(r["generated_tokens"] for r in rows),
    }
    gains = [r["likelihood_gain"] for r in rows if r["kept"] and r["likelihood_gain"] is not None]
    rejected = [r["likelihood_gain"] for r in generated if not r["kept"] and r["likelihood_gain"] is not None]
    metrics = {
        "keep_rate": round(kept / len(generated), 4) if generated else 0.0,
        "direct_accuracy": round(sum(direct) / len(direct), 4) if direct else None,
        "filter_order": list(order),
        "passed_each_filter": {name: sum(1 for v in judged if v.get(name)) for name in order},
        "mean_kept_gain": round(sum(gains) / len(gains), 4) if gains else None,
        "gain_kept": gain_distribution(gains),
        "gain_rejected": gain_distribution(rejected),
    }
    return counts, metrics


def gains_of_file(path: str | Path) -> dict[str, dict[str, float | int | None]]:
    """The gain distributions of a traces file's kept and rejected traces (those generated and scored)."""
    table = pq.read_table(path, columns=["raw_text", "kept", "likelihood_gain"])
    kept: list[float] = []
    rejected: list[float] = []
    for row in table.to_pylist():
        if row["raw_text"] is not None and row["likelihood_gain"] is not None:
            (kept if row["kept"] else rejected).append(row["likelihood_gain"])
    return {"kept": gain_distribution(kept), "rejected": gain_distribution(rejected)}
