"""`prime-ray submit | status | list | logs | cancel | artifacts` against a gateway, through the SDK."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

URL = typer.Option(None, "--url", help="Gateway URL [env PRIME_RAY_URL, http://127.0.0.1:8000].")
API_KEY = typer.Option(None, "--api-key", help="API key [env PRIME_RAY_API_KEY].")

artifacts_app = typer.Typer(help="A job's artifact files: list, download.", no_args_is_help=True)


@contextlib.contextmanager
def _client(url: str | None, api_key: str | None) -> Iterator["PrimeClient"]:  # noqa: F821
    """The SDK client; its errors end the command with a message instead of a traceback."""
    from prime_ray.client import JobFailed, PrimeClient, PrimeError, SpecError

    err = Console(stderr=True)
    try:
        with PrimeClient(url, api_key) as client:
            yield client
    except SpecError as e:
        err.print(f"[red]the gateway refused the request: {e.detail}[/red]", highlight=False)
        for problem in e.problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(2)
    except JobFailed as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(1)
    except PrimeError as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(1)


def submit(
    spec_path: Path = typer.Argument(..., help="A job spec (YAML or JSON)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end with progress bars."),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key", help="Resubmitting with it returns the same job."),
    url: Optional[str] = URL,
    api_key: Optional[str] = API_KEY,
) -> None:
    """Submit a job; prints its id (and follows it with --wait)."""
    with _client(url, api_key) as client:
        job = client.submit(spec_path, idempotency_key=idempotency_key)
        typer.echo(job.id)
        if wait:
            job.wait()
            Console(stderr=True).print(f"[green]{job.id} succeeded[/green]")


def status(
    job_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Print the gateway's JSON document."),
    url: Optional[str] = URL,
    api_key: Optional[str] = API_KEY,
) -> None:
    """A job's state, current stage, progress per stage and metrics."""
    with _client(url, api_key) as client:
        job = client.get(job_id)
    if as_json:
        typer.echo(json.dumps(job.data, indent=2))
        return
    console = Console()
    console.print(f"[bold]{job.id}[/bold] ({job.name}): {job.state}" + (f", stage {job.stage}" if job.stage else ""))
    if job.error:
        console.print(f"[red]error:[/red] {job.error}", highlight=False)
    table = Table("stage", "state", "done", "total", "metrics")
    for stage, entry in job.progress.items():
        final = job.metrics.get(stage) or entry.get("metrics") or {}
        table.add_row(stage, entry["state"], _text(entry.get("done")), _text(entry.get("total")),
                      "  ".join(f"{k}={_text(v)}" for k, v in final.items()))
    if job.progress:
        console.print(table)


def list_jobs(
    state: Optional[str] = typer.Option(None, "--state", help="queued, running, succeeded, failed or cancelled."),
    limit: int = typer.Option(20, "--limit", min=1),
    url: Optional[str] = URL,
    api_key: Optional[str] = API_KEY,
) -> None:
    """Jobs, newest first."""
    with _client(url, api_key) as client:
        jobs = client.list(state=state, limit=limit)
    table = Table("id", "name", "state", "stage", "created")
    for job in jobs:
        table.add_row(job.id, job.name or "", job.state, job.stage or "", job.data["created_at"][:19])
    Console().print(table)


def logs(job_id: str = typer.Argument(...), url: Optional[str] = URL, api_key: Optional[str] = API_KEY) -> None:
    """The Ray job's logs (the runner's output)."""
    with _client(url, api_key) as client:
        typer.echo(client.get(job_id).logs(), nl=False)


def cancel(job_id: str = typer.Argument(...), url: Optional[str] = URL, api_key: Optional[str] = API_KEY) -> None:
    """Cancel a job (it becomes cancelled once Ray has stopped it)."""
    with _client(url, api_key) as client:
        job = client.get(job_id).cancel()
    typer.echo(f"{job.id}: cancel requested ({job.state})")


@artifacts_app.command("list")
def artifacts_list(job_id: str = typer.Argument(...), url: Optional[str] = URL, api_key: Optional[str] = API_KEY) -> None:
    """A job's artifact files with their sizes."""
    with _client(url, api_key) as client:
        files = client.get(job_id).artifacts()
    table = Table("path", "bytes", "modified")
    for item in files:
        table.add_row(item["path"], str(item["size"]), item["modified_at"][:19])
    Console().print(table)


@artifacts_app.command("download")
def artifacts_download(
    job_id: str = typer.Argument(...),
    paths: Optional[list[str]] = typer.Argument(None, help="Artifact paths (default: all)."),
    dest: Path = typer.Option(Path("."), "--dest", help="Folder to write into (relative paths are kept)."),
    url: Optional[str] = URL,
    api_key: Optional[str] = API_KEY,
) -> None:
    """Download a job's artifacts."""
    with _client(url, api_key) as client:
        written = client.get(job_id).download(dest, paths or None)
    for path in written:
        typer.echo(str(path))


def _text(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("status")(status)
    app.command("list")(list_jobs)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.add_typer(artifacts_app, name="artifacts")
