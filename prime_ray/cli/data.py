"""`prime-ray data validate SOURCE | stats SOURCE`: check a data set row by row, or describe it."""

from __future__ import annotations

from pathlib import Path

import typer

from prime_ray.cli.text import err_console, say, typer_app
from prime_ray.data.sources import SOURCE_FORMS, describe_source, load_source, parse_source_arg
from prime_ray.data.stats import source_stats
from prime_ray.data.validation import DataError, LoadResult
from prime_ray.spec import MovieLensSource, SpecError, load_spec

data_app = typer_app(help="Data sets: validate every row, or print statistics.", no_args_is_help=True)

SOURCE_HELP = f"The data: {SOURCE_FORMS}."
FORMAT_HELP = "How to read a .jsonl file: jsonl (native) or threads."
MAX_LISTED_OUTPUTS = 50
SPEC_HELP = "A job spec: also check outputs against its task, and build MovieLens queries by its split."


def _load(source_text: str, format: str | None, spec_path: Path | None):
    err = err_console()
    try:
        source = parse_source_arg(source_text, format)
        spec = load_spec(spec_path) if spec_path is not None else None
        loaded = load_source(source, spec.data if spec else None, seed=spec.seed if spec else 0)
    except SpecError as e:
        say(err, str(e))
        raise typer.Exit(2) from None
    except (ValueError, DataError) as e:  # a source that cannot be named or read at all
        say(err, f"error: {e}")
        raise typer.Exit(2) from None
    return source, loaded


@data_app.command("validate")
def validate(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    format: str | None = typer.Option(None, "--format", help=FORMAT_HELP),
    spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
) -> None:
    """List every bad row as FILE:LINE: FIELD: MESSAGE; exit 1 if there is any, 0 if none."""
    parsed, loaded = _load(source, format, spec)
    for problem in loaded.problems:
        typer.echo(str(problem))
    summary = f"{describe_source(parsed)}: {len(loaded.users)} valid users, {len(loaded.problems)} problem(s)"
    typer.echo(summary)
    if loaded.problems:
        raise typer.Exit(1)


@data_app.command("stats")
def stats(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    format: str | None = typer.Option(None, "--format", help=FORMAT_HELP),
    spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
) -> None:
    """Users, items (history + queries), and how they spread over users."""
    parsed, loaded = _load(source, format, spec)
    typer.echo(_stats_text(parsed, loaded))


def _stats_text(source, loaded: LoadResult) -> str:
    figures = source_stats(loaded.users)
    noun = "ratings" if isinstance(source, MovieLensSource) else "items"
    lines = [
        f"{describe_source(source)}",
        f"  {figures.users} users",
        f"  {figures.items} {noun}: {figures.history_items} history + {figures.queries} queries",
        f"  history per user: {figures.history_per_user}",
        f"  queries per user: {figures.queries_per_user}",
        f"  {figures.distinct_outputs} distinct outputs" + _top_outputs(figures),
    ]
    if figures.unlabelled_queries:
        lines.append(f"  {figures.unlabelled_queries} unlabelled queries (no output: kept for prediction, not scored)")
    lines.append(f"  leakage check: {loaded.leaks} history item(s) holding a query's input removed")
    bad_rows = len(loaded.problems) - loaded.leaks
    if bad_rows:
        lines.append(f"  {bad_rows} bad row(s) skipped (see `prime-ray data validate`)")
    lines += [f"  note: {note}" for note in loaded.notes]
    return "\n".join(lines)


def _top_outputs(figures) -> str:
    """The most frequent outputs, for label and rating data (free text has about one output per item)."""
    if figures.distinct_outputs > MAX_LISTED_OUTPUTS or not figures.top_outputs or figures.top_outputs[0][1] < 2:
        return ""
    shown = ", ".join(f"{output[:30]!r} {count}" for output, count in figures.top_outputs)
    more = figures.distinct_outputs - len(figures.top_outputs)
    return f": {shown}" + (f" (+{more} more)" if more else "")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
