"""What `prime-ray run` and `prime-ray submit --wait` show while a job runs, fed by its events.

Both read the same events (`events.jsonl`: the runner's listener locally, the gateway's event stream
for a submitted job) and draw them one of two ways:
- on a terminal, a live view: one line per stage with a bar, done/total in the stage's unit, its rate,
  elapsed time, ETA and the key metrics as they arrive; the job's messages print above it;
- elsewhere (CI, `| tee`, a Ray job's log), one plain line per event.
At the end: the evaluation's comparison table and the artifact paths.

`JobLogs` sends what Ray, Serve, Data, Train, DeepSpeed and transformers print (their loggers and the
workers' output, which Ray forwards to the driver) to the job's `logs/driver.log` instead of the
terminal, by pointing the process's stdout and stderr there; the view keeps the terminal.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from prime_ray.cli.text import plain, say

# What each stage counts in its progress events (done/total), and the metrics worth a glance.
STAGE_UNITS = {"ingest": "examples", "memory": "users", "traces": "users", "train": "steps", "eval": "generations"}
KEY_METRICS = ("kept", "rows", "profiles", "loss", "direct", "think", "tokens_per_s", "student", "mode", "problems")
LOG_FILE = "driver.log"
# The files a user opens first, relative to the job's folder (listed at the end where they exist).
KEY_ARTIFACTS = ("eval/report.md", "eval/report.json", "eval/report.png", "train/curves.png", "traces/traces.parquet",
                 "train/prime/adapter", "train/fast/adapter", "events.jsonl", f"logs/{LOG_FILE}")
# Lines of a log that a user should hear about once (counted, the first shown).
_WARNING = re.compile(r"\b(WARNING|WARN|Warning|DeprecationWarning|UserWarning|FutureWarning)\b")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics_text(metrics: dict[str, Any], keys: tuple[str, ...] | None = KEY_METRICS) -> str:
    items = metrics.items() if keys is None else ((k, metrics[k]) for k in keys if k in metrics)
    return "  ".join(f"{k}={_fmt(v)}" for k, v in items if not isinstance(v, (dict, list)))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Count(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("skipped"):
            return Text("skipped", style="dim")
        total = "?" if task.total is None else f"{task.total:.0f}"
        return Text(f"{task.completed:.0f}/{total} {task.fields['unit']}", style="green")


def _average_rate(task: Task) -> float | None:
    """Done per second since the stage started: progress comes in bursts (a user, a logging window),
    so the average says more than rich's recent-samples speed."""
    elapsed = task.finished_time if task.finished else task.elapsed
    if not elapsed or not task.completed:
        return None
    return task.completed / elapsed


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = None if task.fields.get("skipped") else _average_rate(task)
        return Text(f"{rate:.3g} {task.fields['unit']}/s" if rate else "", style="cyan")


class _Eta(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.finished or not task.started:
            return Text("")
        rate = _average_rate(task)
        if rate and task.total is not None:
            return Text(f"ETA {_duration((task.total - task.completed) / rate)}", style="yellow")
        return Text("ETA -:--:--", style="yellow")


class LiveView:
    """A rich Progress: one line per stage. Call it with each event; `close()` at the end."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("{task.fields[stage]:<7}", style="bold", markup=False),
            BarColumn(bar_width=30),
            _Count(),
            _Rate(),
            TimeElapsedColumn(),
            _Eta(),
            TextColumn("{task.fields[info]}", markup=False),
            console=console,
            # Not rich's default: print() and log lines of other code would be drawn above the bars.
            # They go where stdout/stderr point (the job's log file, unless --verbose).
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def _task(self, stage: str, total: float | None = None):
        if stage not in self.tasks:
            unit = STAGE_UNITS.get(stage, "items")
            self.tasks[stage] = self.progress.add_task(stage, stage=stage, unit=unit, info="", total=total, start=False)
        return self.tasks[stage]

    def _print(self, *parts: Any) -> None:
        say(self.progress.console, *parts)

    def __call__(self, event) -> None:
        stage, kind = event.stage, event.kind
        if kind == "job_started":
            for name in event.metrics.get("stages", []):
                self._task(str(name))
        elif kind == "stage_started":
            self.progress.start_task(self._task(stage))
        elif kind == "progress":
            task = self._task(stage)
            self.progress.start_task(task)
            info = _metrics_text(event.metrics)
            self.progress.update(task, completed=event.done or 0, total=event.total, info=info)
        elif kind == "log":
            self._print(plain(f"  {stage or 'job'}: ", "dim"), event.message or "")
        elif kind == "stage_skipped":
            task = self._task(stage)
            self.progress.update(task, total=1, completed=1, skipped=True, info="outputs up to date")
        elif kind == "stage_finished":
            task = self._task(stage)
            total = self.progress.tasks[task].total or 1
            seconds = event.metrics.get("seconds")
            done = f"done in {_duration(seconds)}" if seconds is not None else "done"
            self.progress.update(task, completed=total, total=total, info=f"{done}  {_metrics_text(event.metrics)}".strip())
            self.progress.stop_task(task)
        elif kind == "stage_failed":
            self.progress.update(self._task(stage), info="failed")
            self._print(plain(f"{stage} failed: ", "red"), event.message or "")
        elif kind == "job_cancelled" and stage:
            self.progress.update(self._task(stage), info=f"cancelled: {event.message or ''}")
        # job_failed, job_finished: the command's last lines say it

    def close(self) -> None:
        self.progress.stop()


class PlainView:
    """One line per event, for output that is not a terminal."""

    def __init__(self, console: Console):
        self.console = console
        self.started: dict[str, float] = {}  # stage -> time of its stage_started

    def _rate(self, event) -> float | None:
        began = self.started.get(event.stage)
        elapsed = event.time - began if began is not None else 0
        return event.done / elapsed if event.done and elapsed > 0 else None

    def __call__(self, event) -> None:
        stage, kind = event.stage, event.kind
        clock = time.strftime("%H:%M:%S", time.localtime(event.time))
        parts: list[str] = [clock, stage or "job", kind]
        if kind == "stage_started":
            self.started[stage] = event.time
        if kind == "progress":
            unit = STAGE_UNITS.get(stage or "", "items")
            total = "?" if event.total is None else str(event.total)
            parts.append(f"{event.done}/{total} {unit}")
            rate = self._rate(event)
            if rate:
                parts.append(f"{rate:.3g} {unit}/s")
                if event.total and event.done < event.total:
                    parts.append(f"ETA {_duration((event.total - (event.done or 0)) / rate)}")
            parts.append(_metrics_text(event.metrics))
        elif kind in ("stage_finished", "stage_skipped"):
            parts.append(_metrics_text(event.metrics, keys=None))
        if event.message:
            parts.append(event.message)
        say(self.console, " ".join(p for p in parts if p))

    def close(self) -> None:
        pass


class EventFollower:
    """Feeds `view` the events appended to `events.jsonl` from now on, from a thread, until closed.

    The file, not the runner's in-process listener: events written by Ray workers (the training
    steps) reach the view as well."""

    def __init__(self, path: Path, view, poll_s: float = 0.25):
        from prime_ray.pipeline.events import read_events

        self._read = read_events
        self.path = Path(path)
        self.view = view
        self.poll_s = poll_s
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prime-ray-events", daemon=True)

    def __enter__(self) -> EventFollower:
        self._thread.start()
        return self

    def _drain(self) -> None:
        for self.offset, event in self._read(self.path, self.offset):  # noqa: B020 - the iterable is built once
            self.view(event)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            with contextlib.suppress(Exception):  # a view that fails must not stop the job
                self._drain()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self._drain()
        self.view.close()


def make_view(console: Console):
    return LiveView(console) if console.is_terminal else PlainView(console)


def _cell(metric: dict[str, Any] | None, digits: int = 3) -> str:
    if not metric or metric.get("value") is None:
        return "–"
    text = f"{metric['value']:.{digits}f}"
    if metric.get("low") is not None and metric.get("high") is not None:
        text += f" [{metric['low']:.{digits}f}, {metric['high']:.{digits}f}]"
    return text


def report_tables(report: dict[str, Any]) -> list[Table]:
    """The comparison of report.json as rich tables, one per split: each mode's task metrics with their
    95 % intervals and its parse rate; the best mode on the primary metric in bold."""
    lower = set(report.get("lower_is_better", []))
    primary = report["primary_metric"]
    tables = []
    for split in report["splits"]:
        rows = report["results"][split]
        n = max((r["n"] for r in rows.values()), default=0)
        table = Table(title=plain(f"{split} (n = {n}) · {primary} {'lower' if primary in lower else 'higher'} is better"),
                      title_justify="left")
        table.add_column("mode", no_wrap=True)
        for name in report["metrics"]:
            table.add_column(f"{name} {'↓' if name in lower else '↑'}", no_wrap=True, justify="right")
        table.add_column("parse rate ↑", no_wrap=True, justify="right")
        values = {mode: r["metrics"][primary]["value"] for mode, r in rows.items() if r["metrics"][primary]["value"] is not None}
        best = (min if primary in lower else max)(values, key=values.__getitem__) if len(values) > 1 else None
        for mode, r in rows.items():
            cells = [_cell(r["metrics"].get(name)) for name in report["metrics"]]
            cells.append(_cell(r["health"].get("parse_rate"), 2))
            table.add_row(plain(mode, "bold" if mode == best else ""), *cells)
        tables.append(table)
    return tables


def show_report(console: Console, report: dict[str, Any] | None, markdown: str | None, artifacts: list[str],
                where: str) -> None:
    """The comparison table (rich tables from report.json on a terminal, report.md verbatim elsewhere)
    and the artifact paths."""
    if console.is_terminal and report:
        for table in report_tables(report):
            console.print(table)
    elif markdown:
        say(console, markdown)  # plain: a Markdown table must not be wrapped
    say(console, plain("artifacts", "bold"), f" in {where}:")
    for path in artifacts:
        say(console, f"  {path}")


class JobLogs:
    """While open, fd 1 and 2 (and so sys.stdout/sys.stderr, Python's log handlers, Ray's forwarded
    worker output, the subprocesses Ray starts) write to `<job>/logs/driver.log`; `console` draws on
    the terminal that stdout was. With `verbose`, or when stdout is no real file (a test runner's
    capture), nothing is redirected."""

    def __init__(self, job_dir: Path, verbose: bool = False):
        self.path = Path(job_dir) / "logs" / LOG_FILE
        self.verbose = verbose
        self.saved: list[int] = []
        self.start = 0
        self.console = Console(highlight=False)

    def __enter__(self) -> JobLogs:
        if self.verbose:
            return self
        try:
            out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
        except (AttributeError, ValueError, OSError):
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        terminal = os.fdopen(os.dup(out_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        self.console = Console(file=terminal, highlight=False)
        self.saved = [os.dup(out_fd), os.dup(err_fd)]
        log = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.start = os.fstat(log).st_size  # a re-run appends: its summary reads from here
        os.dup2(log, out_fd)
        os.dup2(log, err_fd)
        os.close(log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(self.saved[0], sys.stdout.fileno())
            os.dup2(self.saved[1], sys.stderr.fileno())
            for fd in self.saved:
                os.close(fd)
            self.saved = []
            with contextlib.suppress(Exception):
                self.console.file.flush()

    @property
    def redirected(self) -> bool:
        return bool(self.saved)

    def warnings_summary(self) -> str | None:
        """One line on the warnings the libraries logged (counted; the first quoted), or None."""
        if not self.redirected or not self.path.exists():
            return None
        count, first = 0, ""
        for line in _lines(self.path, self.start):
            if _WARNING.search(line):
                count += 1
                first = first or line.strip()
        if not count:
            return None
        return f"{count} warning line(s) from Ray and the libraries in {self.path}; first: {first[:160]}"


def _lines(path: Path, offset: int) -> Iterator[str]:
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            yield raw.decode("utf-8", errors="replace")
