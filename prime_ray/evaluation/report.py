"""The evaluation report: every number as JSON, Markdown tables, a chart, and sample outputs.

    report.json    the model, the data, counts, the spec hash, and per split and mode (and non-LLM
                   reference): n, parse failures, each task metric and thinking-health metric with its
                   95 % interval; the paired comparisons, the claims' verdicts, the traces' gains
    report.md      per split, a table (rows = modes, then references), the paired differences and the
                   three claim lines; the likelihood gains of kept and rejected traces
    report.png     the primary metric and the repetition rate per mode and split, with error bars, and
                   the paired differences with their intervals and the claims' verdicts
    samples.jsonl  a few outputs per mode and split (input, gold, prediction, trace)

Plain compute: the eval stage builds a `Report` from its outcomes and calls `write_report`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from prime_ray.evaluation.comparisons import Claim, Comparison, claims, paired_comparisons
from prime_ray.evaluation.metrics import LOWER_IS_BETTER, MetricValue, Outcome, thinking_health
from prime_ray.evaluation.references import REFERENCE_PREFIX, outcomes_by_split, reference_descriptions
from prime_ray.spec import TaskSpec
from prime_ray.tasks import task_kind

REPORT_FILES = ("report.json", "report.md", "report.png", "samples.jsonl")

SPLIT_TITLES = {
    "test_query": "held-out queries of training users",
    "test_user": "held-out users (never trained on)",
}
HEALTH_COLUMNS = {"parse_rate": "parse rate", "strict_parse_rate": "strict parse", "forced": "forced",
                  "repetition": "repetition", "distinct_2": "distinct-2", "trace_words": "trace words"}


@dataclass(frozen=True)
class ModeResult:
    """The numbers of one mode (or non-LLM reference, `ref:<name>`) on one split."""

    mode: str
    split: str
    n: int
    parse_failures: int
    metrics: dict[str, MetricValue]
    health: dict[str, MetricValue]
    scores: dict[str, float] = field(default_factory=dict, repr=False)  # example id -> primary metric's score
    fallback_parses: int = 0  # answers found by the parser's fallback, not on an `Answer:` line (nor forced)

    @property
    def is_reference(self) -> bool:
        return self.mode.startswith(REFERENCE_PREFIX)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "parse_failures": self.parse_failures,
            "fallback_parses": self.fallback_parses,
            "metrics": {k: v.to_json() for k, v in self.metrics.items()},
            "health": {k: v.to_json() for k, v in self.health.items()},
        }


def summarize_mode(
    task: TaskSpec, mode: str, split: str, outcomes: Sequence[Outcome], *, n_resamples: int, seed: int
) -> ModeResult:
    """One mode's (or reference's) numbers on one split, and its per-example primary scores for pairing."""
    kind = task_kind(task)
    primary = kind.example_scores(task, outcomes)[kind.primary_metric]
    return ModeResult(
        mode=mode,
        split=split,
        n=len(outcomes),
        parse_failures=sum(o.predicted is None for o in outcomes),
        metrics=kind.metrics(task, outcomes, n_resamples=n_resamples, seed=seed),
        health=thinking_health(outcomes, n_resamples=n_resamples, seed=seed),
        scores={o.example_id: float(v) for o, v in zip(outcomes, primary)},
        fallback_parses=sum(o.predicted is not None and o.strict is False and not o.forced for o in outcomes),
    )


def reference_results(task: TaskSpec, by_split, users, roles, *, n_resamples: int, seed: int) -> list[ModeResult]:
    """Every non-LLM reference's result on every split (see `references.outcomes_by_split` for the inputs)."""
    return [summarize_mode(task, name, split, outcomes, n_resamples=n_resamples, seed=seed)
            for split, refs in outcomes_by_split(task, by_split, users, roles).items()
            for name, outcomes in refs.items()]


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
    trace_gains: dict[str, dict[str, Any]] = field(default_factory=dict)  # "kept"/"rejected" -> gain_distribution

    @property
    def primary_metric(self) -> str:
        return task_kind(self.task).primary_metric

    @property
    def lower_is_better(self) -> bool:
        return task_kind(self.task).lower_is_better

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(r.split for r in self.results))

    @property
    def modes(self) -> list[str]:
        """The model modes, in order (references excluded)."""
        return [m for m in self.rows if not m.startswith(REFERENCE_PREFIX)]

    @property
    def rows(self) -> list[str]:
        """Every mode and reference, in order."""
        return list(dict.fromkeys(r.mode for r in self.results))

    def result(self, split: str, mode: str) -> ModeResult | None:
        return next((r for r in self.results if r.split == split and r.mode == mode), None)

    def _by_split(self, split: str) -> tuple[dict[str, dict[str, float]], dict[str, float | None]]:
        rows = [r for r in self.results if r.split == split]
        return {r.mode: r.scores for r in rows}, {r.mode: r.metrics[self.primary_metric].value for r in rows}

    @cached_property
    def comparisons(self) -> list[Comparison]:
        """The paired table of every split (prime_ray.evaluation.comparisons)."""
        out = []
        for split in self.splits:
            scores, values = self._by_split(split)
            refs = [r.mode for r in self.results if r.split == split and r.is_reference]
            out += paired_comparisons(split, scores, values, metric=self.primary_metric,
                                      lower_is_better=self.lower_is_better, references=refs,
                                      n_resamples=self.bootstrap_samples, seed=self.seed)
        return out

    @cached_property
    def claims(self) -> list[Claim]:
        """The three claims' verdicts on every split (references take no part)."""
        out = []
        for split in self.splits:
            scores, values = self._by_split(split)
            models = {m: s for m, s in scores.items() if not m.startswith(REFERENCE_PREFIX)}
            out += claims(split, models, values, metric=self.primary_metric, lower_is_better=self.lower_is_better,
                          n_resamples=self.bootstrap_samples, seed=self.seed)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "spec_hash": self.spec_hash,
            "model": self.model,
            "data": self.data,
            "task": self.task.model_dump(mode="json"),
            "primary_metric": self.primary_metric,
            "lower_is_better": sorted(LOWER_IS_BETTER),
            "metrics": task_kind(self.task).metric_names(self.task),
            "confidence": 0.95,
            "bootstrap_samples": self.bootstrap_samples,
            "seed": self.seed,
            "modes": self.modes,
            "splits": self.splits,
            "skipped_modes": self.skipped_modes,
            "counts": self.counts,
            "results": {s: {r.mode: r.to_json() for r in self.results if r.split == s} for s in self.splits},
            "references": dict(reference_descriptions(self.task)),
            "paired": [c.to_json() for c in self.comparisons],
            "claims": [c.to_json() for c in self.claims],
            "trace_gains": self.trace_gains,
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


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _cell(metric: MetricValue) -> str:
    if metric.low is None or metric.high is None:
        return _fmt(metric.value)
    return f"{_fmt(metric.value)} [{_fmt(metric.low)}, {_fmt(metric.high)}]"


def _difference(c: Comparison) -> str:
    d = c.difference
    interval = f" [{_signed(d.low)}, {_signed(d.high)}]" if d.low is not None else ""
    return f"{_signed(d.value)}{interval}"


def _best(report: Report, split: str) -> str | None:
    """The mode with the best primary metric on `split` (None on a tie or when nothing was measured)."""
    name = report.primary_metric
    values = {r.mode: v for r in report.results if r.split == split
              and (v := r.metrics[name].value) is not None}
    if len(values) < 2:
        return None
    pick = min if name in LOWER_IS_BETTER else max
    best = pick(values.values())
    winners = [m for m, v in values.items() if v == best]
    return winners[0] if len(winners) == 1 else None


def claim_line(claim: Claim) -> str:
    """One claim as the report prints it: verdict, the paired difference, n."""
    c = claim.comparison
    if c is None:
        return f"{claim.number}. {claim.statement}: **{claim.verdict}** ({claim.note})"
    return (f"{claim.number}. {claim.statement}: **{claim.verdict}** — {c.a} − {c.b} = {_difference(c)} "
            f"{c.metric}, n = {c.n}")


def _gain_line(name: str, d: dict[str, Any]) -> str:
    if not d or not d.get("n"):
        return f"| {name} | 0 | – | – | – | – | – |"
    return (f"| {name} | {d['n']} | {_signed(d['mean'])} | {_signed(d['p10'])} | {_signed(d['median'])} | "
            f"{_signed(d['p90'])} | {_fmt(d['share_positive'], 2)} |")


def render_markdown(report: Report) -> str:
    kind = task_kind(report.task)
    names = kind.metric_names(report.task)
    # trace length has no better direction: a longer trace is neither better nor worse by itself; the forced
    # share describes how the answers were read, not their quality
    arrows = {n: ("↓" if n in LOWER_IS_BETTER else "↑") for n in [*names, *HEALTH_COLUMNS]}
    arrows |= {"trace_words": "", "forced": ""}
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
        for r in sorted(rows, key=lambda r: r.is_reference):  # models first, then the references
            mode = f"**{r.mode}**" if r.mode == best else (f"*{r.mode}*" if r.is_reference else r.mode)
            cells = [mode, *(_cell(r.metrics[m]) for m in names)]
            if r.is_reference:
                cells += ["–"] * len(HEALTH_COLUMNS)
            else:
                cells.append(f"{_fmt(r.health['parse_rate'].value, 2)} ({r.parse_failures} failed)")
                cells.append(f"{_fmt(r.health['strict_parse_rate'].value, 2)} ({r.fallback_parses} by fallback)")
                cells.append(_fmt(r.health["forced"].value, 2))  # "–" in direct modes: nothing is forced there
                cells += [_fmt(r.health[k].value, 3 if k != "trace_words" else 1) for k in ("repetition", "distinct_2", "trace_words")]
            lines.append("| " + " | ".join(cells) + " |")
        paired = [c for c in report.comparisons if c.split == split]
        if paired:
            lines += ["", f"Paired differences on {split} ({report.primary_metric}, A − B per example, "
                          f"{'lower' if report.lower_is_better else 'higher'} is better):", "",
                      "| A | B | what it tests | n | A − B [95 %] | favours |", "|---|---|---|---:|---:|---|"]
            lines += [f"| {c.a} | {c.b} | {c.why} | {c.n} | {_difference(c)} | {c.favours or 'neither'} |" for c in paired]
        split_claims = [c for c in report.claims if c.split == split]
        if split_claims:
            lines += ["", f"Claims of the method on {split}:", ""] + [claim_line(c) for c in split_claims]
    if report.skipped_modes:
        lines += ["", "Not evaluated: " + "; ".join(f"{m} ({why})" for m, why in report.skipped_modes.items())]
    refs = reference_descriptions(report.task)
    if any(r.is_reference for r in report.results):
        lines += ["", "References (no language model): " + "; ".join(
            f"*{name}*: {text}" for name, text in refs.items() if any(r.mode == name for r in report.results)) + "."]
    if report.trace_gains:
        lines += ["", "Likelihood gain of the training traces, log p(y | x, trace) − log p(y | x) under the "
                      "generalist (nats; > 0: the trace makes the gold answer more likely):", "",
                  "| traces | n | mean | p10 | median | p90 | share > 0 |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [_gain_line(name, report.trace_gains.get(name, {})) for name in ("kept", "rejected")]
    if note := kind.metric_note(report.task):
        lines += ["", note]
    lines += [
        "",
        "Unparsed answers count as wrong (ratings: the largest possible error). Strict parse: answers the model wrote "
        "on an `Answer:` line itself; the rest of the parse rate was found by the parser's fallback or forced. "
        "Forced: share of a think mode's answers completed after its think block was closed for it (the thinking "
        "reached no answer line within the token budget; `eval.force_answer`). Repetition: share of a "
        "trace's word 3-grams that repeat an earlier one; distinct-2: unique word bigrams over all traces of the "
        "mode. A claim is *shown* when the paired 95 % interval favours it, *reversed* when it favours the other "
        "side, *not shown at this size* when it contains 0.",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- chart


def plot_report(report: Report, path: Path) -> None:
    """Three stacked panels: the primary metric and the repetition rate (a bar per mode and split, 95 % error
    bars), and the paired differences of the first split with their intervals and the claims' verdicts."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend needed

    modes, splits = report.rows, report.splits
    panels = [(report.primary_metric, "metrics"), ("repetition", "health")]
    fig = Figure(figsize=(max(8.0, 1.0 * len(modes)), 11.5), layout="constrained")
    axes = fig.subplots(3, 1, height_ratios=[1, 1, 1.1])
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(modes))
    for ax, (name, group) in zip(axes[:2], panels):
        for j, split in enumerate(splits):
            values: list[float] = []
            errors: list[list[float]] = [[], []]
            for mode in modes:
                result = report.result(split, mode)
                metric = getattr(result, group).get(name, MetricValue(None)) if result else MetricValue(None)
                value = np.nan if metric.value is None else metric.value
                values.append(value)
                low, high = (metric.low, metric.high) if metric.value is not None else (None, None)
                errors[0].append(max(0.0, value - low) if low is not None and high is not None else 0.0)
                errors[1].append(max(0.0, high - value) if low is not None and high is not None else 0.0)
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
    _plot_paired(report, axes[2])
    fig.suptitle(f"{report.job}: {report.model.get('name_or_path')}")
    fig.savefig(path, dpi=110)


def _plot_paired(report: Report, ax) -> None:
    split = report.splits[0] if report.splits else None
    paired = [c for c in report.comparisons if c.split == split]
    if not paired:
        ax.set_axis_off()
        ax.set_title("paired differences: none (a mode of each pair is missing)")
        return
    y = np.arange(len(paired))[::-1]
    for yi, c in zip(y, paired):
        d = c.difference
        value = np.nan if d.value is None else d.value
        xerr = [[value - d.low], [d.high - value]] if d.low is not None and d.high is not None else None
        colour = "tab:green" if c.favours == c.a else "tab:red" if c.favours == c.b else "tab:gray"
        ax.errorbar([value], [yi], xerr=xerr, fmt="o", color=colour, capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{c.a} − {c.b} (n={c.n})" for c in paired], fontsize=8)
    better = "lower" if report.lower_is_better else "higher"
    ax.set_xlabel(f"A − B in {report.primary_metric} ({better} is better for A); 95 % paired bootstrap")
    verdicts = "; ".join(f"claim {c.number}: {c.verdict}" for c in report.claims if c.split == split)
    ax.set_title(f"paired differences on {split} — {verdicts}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
