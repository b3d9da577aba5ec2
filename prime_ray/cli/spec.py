"""`prime-ray spec schema | validate FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prime_ray.cli.text import err_console, plain, say, typer_app
from prime_ray.spec import SpecError, load_spec, spec_json_schema

spec_app = typer_app(help="The job spec: its JSON schema, and validation of a spec file.", no_args_is_help=True)


@spec_app.command("schema")
def schema() -> None:
    """Print the JobSpec JSON schema."""
    typer.echo(json.dumps(spec_json_schema(), indent=2))


@spec_app.command("validate")
def validate(path: Path = typer.Argument(..., help="A spec file (YAML or JSON).")) -> None:
    """Exit 0 if the spec is valid; else list every problem by its path in the document and exit 1."""
    err = err_console()
    try:
        spec = load_spec(path)
    except SpecError as e:
        say(err, plain(f"{path}: {len(e.problems)} problem(s)", "red"))
        for problem in e.problems:
            say(err, f"  {problem}")
        raise typer.Exit(1) from None
    typer.echo(f"{path}: valid (job '{spec.name}')")


def register(app: typer.Typer) -> None:
    app.add_typer(spec_app, name="spec")
