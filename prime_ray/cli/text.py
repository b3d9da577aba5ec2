"""Printing untrusted text: data values, paths, model output, exception and help text.

rich reads `[...]` as markup: `[/b]` in a row raises MarkupError, `[embed]` or `[bad]` vanish. Every
CLI module prints such text through these helpers, so only the markup written here is interpreted.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

__all__ = ["escape", "plain", "say", "err_console", "out_console", "typer_app", "is_terminal"]


def plain(value: Any, style: str = "") -> Text:
    """`value` as a Text shown verbatim (no markup, no highlighting), in `style`."""
    return Text(str(value), style=style)


def out_console() -> Console:
    return Console(highlight=False)


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def say(console: Console, *parts: Any) -> None:
    """Print one line made of parts: a Text (styled, built by the caller) is kept as it is, anything
    else is shown verbatim. E.g. say(err, plain("error: ", "red"), exc)."""
    line = Text()
    for part in parts:
        line.append(part if isinstance(part, Text) else Text(str(part)))
    console.print(line, soft_wrap=not console.is_terminal, highlight=False)


def is_terminal(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def typer_app(**options: Any):
    """A typer app whose help is printed verbatim: help text such as `[env PRIME_RAY_HOST, 127.0.0.1]`
    is not markup."""
    import typer

    return typer.Typer(rich_markup_mode=None, **options)
