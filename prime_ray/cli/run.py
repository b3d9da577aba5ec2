"""`prime-ray run SPEC`: run a job on an embedded Ray (or a given cluster) with live progress."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import typer

from prime_ray.cli.text import err_console, plain, say
from prime_ray.cli.view import KEY_ARTIFACTS, EventFollower, JobLogs, make_view, show_report
from prime_ray.pipeline.artifacts import EVENTS_FILE
from prime_ray.spec import SpecError, load_spec

STAGE_NAMES = ("ingest", "memory", "traces", "train", "eval")


def _check_force(values: list[str]) -> list[str]:
    unknown = [v for v in values if v not in STAGE_NAMES]
    if unknown:
        raise typer.BadParameter(f"{', '.join(map(repr, unknown))} is not a stage; stages: {', '.join(STAGE_NAMES)}")
    return values


def run(
    spec_path: Path = typer.Argument(..., help="A job spec (YAML or JSON)."),
    address: str | None = typer.Option(
        None, "--address", help="Ray address to join (default: the spec's resources.ray_address, else an embedded Ray)."
    ),
    force: list[str] = typer.Option(
        [], "--force", callback=_check_force,
        help="Run this stage even if its manifest matches (repeatable): ingest, memory, traces, train or eval.",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Let Ray's and the libraries' own logs through to the terminal too "
        "(by default they go to the job's logs/driver.log)."
    ),
) -> None:
    """Run a job's stages in order; stages whose manifests match are skipped.

    Ctrl-C or SIGTERM cancels the job: the stage it was in is recorded and its work stopped; a re-run
    resumes there.
    """
    from prime_ray.pipeline.artifacts import JobArtifacts
    from prime_ray.pipeline.runner import JobCancelled, StageFailed, run_job

    err = err_console()
    try:
        spec = load_spec(spec_path)
    except SpecError as e:
        say(err, str(e))
        raise typer.Exit(2) from None
    job_dir = JobArtifacts(spec.artifact_root, spec.name).job_dir
    with JobLogs(job_dir, verbose=verbose) as logs:
        console = logs.console
        say(console, "job ", plain(spec.name, "bold"), f" -> {spec.artifact_root.rstrip('/')}/{spec.name}")
        if logs.redirected:
            say(console, plain(f"Ray's and the libraries' logs: {logs.path} (--verbose shows them here)", "dim"))
        follower = EventFollower(job_dir / EVENTS_FILE, make_view(console))
        code = 0
        try:
            with follower:
                result = run_job(spec, ray_address=address, force=tuple(force))
        except StageFailed as e:
            logging.getLogger("prime_ray").error("stage %s failed\n%s", e.stage, "".join(
                traceback.format_exception(e.__cause__ or e)))
            say(console, plain("job failed", "red"), f" in stage '{e.stage}': {type(e.__cause__).__name__}: {e.__cause__}")
            code = 1
        except JobCancelled as e:
            where = f" in stage '{e.stage}'" if e.stage else ""
            say(console, plain("job cancelled", "yellow"), f"{where} ({e.reason}); `prime-ray run` again resumes there")
            code = 130
        except ValueError as e:  # e.g. --force naming a stage this job does not run
            say(err, plain("error: ", "red"), e)
            code = 2
        else:
            eval_dir = result.job_dir / "eval"
            report = json.loads((eval_dir / "report.json").read_text()) if (eval_dir / "report.json").exists() else None
            markdown = (eval_dir / "report.md").read_text() if (eval_dir / "report.md").exists() else None
            show_report(console, report, markdown, _artifact_paths(result.job_dir), result.uri)
            say(console, plain("done", "green"), f": artifacts in {result.uri}")
        summary = logs.warnings_summary()
        if summary:
            say(console, plain(summary, "dim"))
        if code and logs.redirected:
            say(console, f"the full log: {logs.path}")
    if code:
        raise typer.Exit(code)


def _artifact_paths(job_dir: Path) -> list[str]:
    return [str(job_dir / rel) for rel in KEY_ARTIFACTS if (job_dir / rel).exists()]


def register(app: typer.Typer) -> None:
    app.command("run")(run)
