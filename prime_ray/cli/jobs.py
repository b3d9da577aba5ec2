"""`prime-ray submit | status | list | logs | cancel | artifacts` against a gateway, through the SDK."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from prime_ray.cli.text import err_console, out_console, plain, say, typer_app

if TYPE_CHECKING:
    from prime_ray.client import PrimeClient

URL = typer.Option(None, "--url", help="Gateway URL [env PRIME_RAY_URL, http://127.0.0.1:8000].")
API_KEY = typer.Option(None, "--api-key", help="API key [env PRIME_RAY_API_KEY].")

artifacts_app = typer_app(help="A job's artifact files: list, download.", no_args_is_help=True)


@contextlib.contextmanager
def _client(url: str | None, api_key: str | None) -> Iterator[PrimeClient]:
    """The SDK client; its errors end the command with a message instead of a traceback."""
    from prime_ray.client import JobFailed, PrimeClient, PrimeError, SpecError

    err = err_console()
    try:
        with PrimeClient(url, api_key) as client:
            yield client
    except SpecError as e:
        say(err, plain(f"the gateway refused the request: {e.detail}", "red"))
        for problem in e.problems:
            say(err, f"  {problem}")
        raise typer.Exit(2) from None
    except JobFailed as e:
        say(err, plain(str(e), "red"))
        raise typer.Exit(130 if e.job.state == "cancelled" else 1) from None
    except PrimeError as e:
        say(err, plain(str(e), "red"))
        raise typer.Exit(1) from None


def submit(
    spec_path: Path = typer.Argument(..., help="A job spec (YAML or JSON)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end: a live view of its stages on a "
                              "terminal, a line per event elsewhere; then its report and artifacts."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key", help="Resubmitting with it returns the same job."),
    url: str | None = URL,
    api_key: str | None = API_KEY,
) -> None:
    """Submit a job; prints its id (and follows it with --wait)."""
    with _client(url, api_key) as client:
        job = client.submit(spec_path, idempotency_key=idempotency_key)
        typer.echo(job.id)
        if wait:
            _follow(job)


def status(
    job_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Print the gateway's JSON document."),
    url: str | None = URL,
    api_key: str | None = API_KEY,
) -> None:
    """A job's state, current stage, progress per stage and metrics."""
    with _client(url, api_key) as client:
        job = client.get(job_id)
    if as_json:
        typer.echo(json.dumps(job.data, indent=2))
        return
    console = out_console()
    say(console, plain(job.id, "bold"), f" ({job.name}): {job.state}" + (f", stage {job.stage}" if job.stage else ""))
    if job.error:
        say(console, plain("error: ", "red"), job.error)
    table = Table("stage", "state", "done", "total", "metrics")
    for stage, entry in job.progress.items():
        final = job.metrics.get(stage) or entry.get("metrics") or {}
        table.add_row(plain(stage), plain(entry["state"]), _text(entry.get("done")), _text(entry.get("total")),
                      plain("  ".join(f"{k}={_text(v)}" for k, v in final.items())))
    if job.progress:
        console.print(table)


def list_jobs(
    state: str | None = typer.Option(None, "--state", help="queued, running, succeeded, failed or cancelled."),
    limit: int = typer.Option(20, "--limit", min=1),
    url: str | None = URL,
    api_key: str | None = API_KEY,
) -> None:
    """Jobs, newest first."""
    with _client(url, api_key) as client:
        jobs = client.list(state=state, limit=limit)
    table = Table("id", "name", "state", "stage", "created")
    for job in jobs:
        table.add_row(plain(job.id), plain(job.name or ""), job.state, plain(job.stage or ""), job.data["created_at"][:19])
    out_console().print(table)


def logs(job_id: str = typer.Argument(...), url: str | None = URL, api_key: str | None = API_KEY) -> None:
    """The Ray job's logs (the runner's output)."""
    with _client(url, api_key) as client:
        typer.echo(client.get(job_id).logs(), nl=False)


def cancel(job_id: str = typer.Argument(...), url: str | None = URL, api_key: str | None = API_KEY) -> None:
    """Cancel a job (it becomes cancelled once Ray has stopped it)."""
    with _client(url, api_key) as client:
        job = client.get(job_id).cancel()
    typer.echo(f"{job.id}: cancel requested ({job.state})")


@artifacts_app.command("list")
def artifacts_list(job_id: str = typer.Argument(...), url: str | None = URL, api_key: str | None = API_KEY) -> None:
    """A job's artifact files with their sizes."""
    with _client(url, api_key) as client:
        files = client.get(job_id).artifacts()
    table = Table("path", "bytes", "modified")
    for item in files:
        table.add_row(plain(item["path"]), str(item["size"]), item["modified_at"][:19])
    out_console().print(table)


@artifacts_app.command("download")
def artifacts_download(
    job_id: str = typer.Argument(...),
    paths: list[str] | None = typer.Argument(None, help="Artifact paths (default: all)."),
    dest: Path = typer.Option(Path("."), "--dest", help="Folder to write into (relative paths are kept)."),
    url: str | None = URL,
    api_key: str | None = API_KEY,
) -> None:
    """Download a job's artifacts."""
    with _client(url, api_key) as client:
        written = client.get(job_id).download(dest, paths or None)
    for path in written:
        typer.echo(str(path))


def _follow(job) -> None:
    """Draw the job's events until it ends (the same view as `prime-ray run`), then its report and
    artifacts; JobFailed (exit 1, 130 if cancelled) unless it succeeded."""
    from prime_ray.cli.view import KEY_ARTIFACTS, make_view, show_report
    from prime_ray.client import JobFailed, NotFound

    console = out_console()
    view = make_view(err_console())  # stdout keeps the job id, the report and the paths
    try:
        for event in job.events(follow=True):
            view(event)
    finally:
        view.close()
    job.refresh()
    if job.state != "succeeded":
        raise JobFailed(job)
    present = {item["path"] for item in job.artifacts()}
    # folders (an adapter) are listed by their files
    paths = [rel for rel in KEY_ARTIFACTS if rel in present or any(p.startswith(rel + "/") for p in present)]
    found = {}
    for name in ("report.json", "report.md"):
        if f"eval/{name}" in present:
            with contextlib.suppress(NotFound):
                found[name] = job.client.request("GET", f"/v1/jobs/{job.id}/artifacts/eval/{name}").text
    report = json.loads(found["report.json"]) if "report.json" in found else None
    show_report(console, report, found.get("report.md"), paths,
                f"the gateway (prime-ray artifacts download {job.id} PATH...)")
    say(console, plain(f"{job.id} succeeded", "green"))


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
