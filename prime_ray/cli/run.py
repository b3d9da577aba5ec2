"""`prime-ray run SPEC`: run a job on an embedded Ray (or a given cluster) with live progress."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prime_ray.spec import SpecError, load_spec


def _raise_interrupt(signum, frame):  # noqa: ARG001
    # A cancelled Ray job gets SIGTERM: end like Ctrl-C so the runner records the cancellation.
    raise KeyboardInterrupt


class _ProgressView:
    """Renders runner events: a bar per stage, the stage's metrics as they arrive."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}

    def _task(self, stage: str) -> int:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, stage=stage, info="", total=None)
        return self.tasks[stage]

    def __call__(self, event) -> None:
        stage = event.stage
        if event.kind == "stage_started":
            self._task(stage)
        elif event.kind == "progress":
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in event.metrics.items())
            self.progress.update(self._task(stage), completed=event.done, total=event.total, info=info)
        elif event.kind == "log":
            self.progress.console.print(f"  [dim]{stage}:[/dim] {event.message}", highlight=False)
        elif event.kind == "stage_skipped":
            self.progress.console.print(f"[cyan]{stage}[/cyan] skipped ({event.message})")
        elif event.kind == "stage_finished":
            task = self._task(stage)
            total = self.progress.tasks[task].total or 1
            self.progress.update(task, completed=total, total=total, info=f"done in {event.metrics.get('seconds', 0):.1f}s")
        elif event.kind == "stage_failed":
            self.progress.console.print(f"[red]{stage} failed:[/red] {event.message}", highlight=False)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run(
    spec_path: Path = typer.Argument(..., help="A job spec (YAML or JSON)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray address to join (default: embedded Ray)."),
    force: list[str] = typer.Option([], "--force", help="Run this stage even if its manifest matches (repeatable)."),
) -> None:
    """Run a job's stages in order; stages whose manifests match are skipped."""
    from prime_ray.pipeline.runner import JobCancelled, StageFailed, run_job

    console = Console()
    try:
        spec = load_spec(spec_path)
    except SpecError as e:
        Console(stderr=True).print(str(e), markup=False, highlight=False)
        raise typer.Exit(2)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    view = _ProgressView(console)
    console.print(f"job [bold]{spec.name}[/bold] -> {spec.artifact_root}/{spec.name}")
    try:
        with view.progress:
            result = run_job(spec, ray_address=address, on_event=view, force=tuple(force))
    except StageFailed as e:
        console.print(f"[red]job failed[/red] in stage '{e.stage}': {e.__cause__}", highlight=False)
        raise typer.Exit(1)
    except JobCancelled:
        console.print("[yellow]job cancelled[/yellow]")
        raise typer.Exit(130)
    summary = result.job_dir / "eval" / "report.md"
    if summary.exists():
        # Plain print: a Markdown table must not be wrapped at the console's width.
        print(summary.read_text(), flush=True)
    console.print(f"[green]done[/green]: artifacts in {result.uri}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
