"""The evaluation report: every number as JSON, a Markdown table, a chart, and sample outputs.

    report.json    the model, the data, counts, the spec hash, and per split and mode: n, parse
                   failures, each task metric and thinking-health metric with its 95 % interval
    report.md      per split, a table: rows = modes; task metrics with intervals, parse rate, repetition
    report.png     the primary task metric and the repetition rate per mode and split, with error bars
    samples.jsonl  a few outputs per mode and split (input, gold, prediction, trace)

Plain compute: the eval stage builds a `Report` from its outcomes and calls `write_report`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from prime_ray.evaluation.metrics import (
    LOWER_IS_BETTER,
    PRIMARY_METRIC,
    MetricValue,
    Outcome,
    metric_names,
    task_metrics,
    thinking_health,
)
from prime_ray.spec import TaskSpec

REPORT_FILES = ("report.json", "report.md", "report.png", "samples.jsonl")

SPLIT_TITLES = {
    "test_query": "held-out queries of training users",
    "test_user": "held-out users (never trained on)",
}
HEALTH_COLUMNS = {"parse_rate": "parse rate", "repetition": "repetition", "distinct_2": "distinct-2",
                  "trace_words": "trace words"}


@dataclass(frozen=True)
class ModeResult:
    """The numbers of one mode on one split."""

    mode: str
    split: str
    n: int
    parse_failures: int
    metrics: dict[str, MetricValue]
    health: dict[str, MetricValue]

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "parse_failures": self.parse_failures,
            "metrics": {k: v.to_json() for k, v in self.metrics.items()},
            "health": {k: v.to_json() for k, v in self.health.items()},
        }


def summarize_mode(
    task: TaskSpec, mode: str, split: str, outcomes: Sequence[Outcome], *, n_resamples: int, seed: int
) -> ModeResult:
    return ModeResult(
        mode=mode,
        split=split,
        n=len(outcomes),
        parse_failures=sum(o.predicted is None for o in outcomes),
        metrics=task_metrics(task, outcomes, n_resamples=n_resamples, seed=seed),
        health=thinking_health(outcomes, n_resamples=n_resamples, seed=seed),
    )


@dataclass
class Report:
    job: str
    spec_hash: str
    model: dict[str, Any]
    data: dict[str, Any]
    task: TaskSpec
    results: list[ModeResult]
    skipped_modes: dict[str, str] = field(default_factory=dict)  # mode -> why it was not evaluated
    counts: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    bootstrap_samples: int = 0
    seed: int = 0

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.task.kind]

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(r.split for r in self.results))

    @property
    def modes(self) -> list[str]:
        return list(dict.fromkeys(r.mode for r in self.results))

    def result(self, split: str, mode: str) -> ModeResult | None:
        return next((r for r in self.results if r.split == split and r.mode == mode), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "spec_hash": self.spec_hash,
            "model": self.model,
            "data": self.data,
            "task": self.task.model_dump(mode="json"),
            "primary_metric": self.primary_metric,
            "lower_is_better": sorted(LOWER_IS_BETTER),
            "metrics": metric_names(self.task),
            "confidence": 0.95,
            "bootstrap_samples": self.bootstrap_samples,
            "seed": self.seed,
            "modes": self.modes,
            "splits": self.splits,
            "skipped_modes": self.skipped_modes,
            "counts": self.counts,
            "results": {s: {r.mode: r.to_json() for r in self.results if r.split == s} for s in self.splits},
        }


def write_report(out_dir: Path, report: Report) -> dict[str, Path]:
    """Write the four report files into `out_dir`; return their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in REPORT_FILES}
    paths["report.json"].write_text(json.dumps(report.to_json(), indent=2, allow_nan=False))
    paths["report.md"].write_text(render_markdown(report))
    plot_report(report, paths["report.png"])
    with paths["samples.jsonl"].open("w") as f:
        for sample in report.samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return paths


# ----------------------------------------------------------------------------------- markdown


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(metric: MetricValue) -> str:
    if metric.low is None or metric.high is None:
        return _fmt(metric.value)
    return f"{_fmt(metric.value)} [{_fmt(metric.low)}, {_fmt(metric.high)}]"


def _best(report: Report, split: str) -> str | None:
    """The mode with the best primary metric on `split` (None on a tie or when nothing was measured)."""
    name = report.primary_metric
    values = {r.mode: r.metrics[name].value for r in report.results if r.split == split
              and r.metrics[name].value is not None}
    if len(values) < 2:
        return None
    pick = min if name in LOWER_IS_BETTER else max
    best = pick(values.values())
    winners = [m for m, v in values.items() if v == best]
    return winners[0] if len(winners) == 1 else None


def render_markdown(report: Report) -> str:
    names = metric_names(report.task)
    # trace length has no better direction: a longer trace is neither better nor worse by itself
    arrows = {n: ("↓" if n in LOWER_IS_BETTER else "↑") for n in [*names, *HEALTH_COLUMNS]} | {"trace_words": ""}
    lines = [
        f"## Evaluation: {report.job}",
        "",
        f"Model `{report.model.get('name_or_path')}` · task `{report.task.kind}` · "
        f"primary metric **{report.primary_metric}** ({arrows[report.primary_metric]}) · "
        f"95 % bootstrap intervals ({report.bootstrap_samples} resamples, seed {report.seed}) · "
        f"spec `{report.spec_hash}`",
    ]
    for split in report.splits:
        rows = [r for r in report.results if r.split == split]
        n = max((r.n for r in rows), default=0)
        best = _best(report, split)
        lines += ["", f"### {split}: {SPLIT_TITLES.get(split, split)} (n = {n})", ""]
        header = ["mode", *(f"{m} {arrows[m]}" for m in names), *(f"{t} {arrows[k]}".strip() for k, t in HEALTH_COLUMNS.items())]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for r in rows:
            mode = f"**{r.mode}**" if r.mode == best else r.mode
            cells = [mode, *(_cell(r.metrics[m]) for m in names)]
            cells.append(f"{_fmt(r.health['parse_rate'].value, 2)} ({r.parse_failures} failed)")
            cells += [_fmt(r.health[k].value, 3 if k != "trace_words" else 1) for k in ("repetition", "distinct_2", "trace_words")]
            lines.append("| " + " | ".join(cells) + " |")
    if report.skipped_modes:
        lines += ["", "Not evaluated: " + "; ".join(f"{m} ({why})" for m, why in report.skipped_modes.items())]
    if report.task.kind == "rating":
        lines += ["", f"Rating accuracy: share with |prediction − gold| ≤ {report.task.tolerance:g} (data.task.tolerance)."]
    lines += [
        "",
        "Unparsed answers count as wrong (ratings: the largest possible error). Repetition: share of a trace's "
        "word 3-grams that repeat an earlier one; distinct-2: unique word bigrams over all traces of the mode.",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- chart


def plot_report(report: Report, path: Path) -> None:
    """Two stacked panels: the primary metric and the repetition rate, a bar per mode and split, 95 % error bars."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend needed

    modes, splits = report.modes, report.splits
    panels = [(report.primary_metric, "metrics"), ("repetition", "health")]
    fig = Figure(figsize=(max(7.0, 1.2 * len(modes)), 7.5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)  # stacked: the mode names fit under one axis
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(modes))
    for ax, (name, group) in zip(axes, panels):
        for j, split in enumerate(splits):
            values, errors = [], [[], []]
            for mode in modes:
                result = report.result(split, mode)
                metric = getattr(result, group)[name] if result else MetricValue(None)
                value = np.nan if metric.value is None else metric.value
                values.append(value)
                has_ci = metric.low is not None and metric.high is not None and metric.value is not None
                errors[0].append(max(0.0, value - metric.low) if has_ci else 0.0)
                errors[1].append(max(0.0, metric.high - value) if has_ci else 0.0)
            offsets = x + (j - (len(splits) - 1) / 2) * width
            ax.bar(offsets, values, width, yerr=errors, capsize=3, label=split)
            for xi, value in zip(offsets, values):
                if np.isnan(value):  # a mode without a value (e.g. no traces in direct mode) is marked, not hidden
                    ax.annotate("n/a", (xi, 0), ha="center", va="bottom", fontsize=7, color="gray")
        ax.set_xticks(x, modes, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, max(0.5, len(modes) - 0.5))  # bars without a value do not widen the axis by themselves
        ax.set_title(f"{name} ({'lower' if name in LOWER_IS_BETTER else 'higher'} is better)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(bottom=0)
        if name == "repetition":
            ax.set_ylim(top=1)  # a share: the full scale shows how far from a loop a mode is
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report.job}: {report.model.get('name_or_path')}")
    fig.savefig(path, dpi=110)
