"""`prime-ray submit | status | list | logs | cancel | artifacts` against a gateway, through the SDK."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
