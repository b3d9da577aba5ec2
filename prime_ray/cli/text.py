"""Printing untrusted text: data values, paths, model output, exception and help text.

rich reads `[...]` as markup: `[/b]` in a row raises MarkupError, `[embed]` or `[bad]` vanish. Every
CLI module prints through these helpers: text is shown verbatim, and styles are given as arguments
(`plain(text, "red")`), never as markup inside a string; typer's help is not read as markup either.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = ["plain", "say", "err_console", "out_console", "typer_app"]


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


def typer_app(**options: Any):
    """A typer app whose help is printed verbatim: help text such as `[env PRIME_RAY_HOST, 127.0.0.1]`
    is not markup."""
    import typer

    return typer.Typer(rich_markup_mode=None, **options)
