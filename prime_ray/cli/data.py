"""`prime-ray data validate SOURCE | stats SOURCE`. (Filled in by the data layer.)"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
