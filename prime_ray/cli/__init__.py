"""The `prime-ray` command. One module per verb group; each adds its commands to the app."""

from __future__ import annotations

from prime_ray.cli import data, jobs, run, service, spec, students
from prime_ray.cli.text import typer_app

app = typer_app(
    name="prime-ray",
    help="Personalized thinking by self-distillation (PRIME), on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for module in (run, spec, data, jobs, service, students):
    module.register(app)


def main() -> None:
    app()
