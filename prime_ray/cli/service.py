"""`prime-ray gateway | keys | up | down`: running prime-ray as a service."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
