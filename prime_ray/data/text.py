"""How every data reader turns bytes into text: UTF-8, a leading byte-order mark ignored.

Bytes that are not UTF-8 do not stop a reader: they are decoded as surrogate escapes
(`errors="surrogateescape"`, one lone surrogate U+DC80..U+DCFF per bad byte), so the reader can still
split the line into fields and report the one field that holds them (`ml-100k.item:5: movie_title:
not valid UTF-8 (byte 0xE9)`), keeping every other row. A string that cannot be encoded as UTF-8 (an
escaped byte, or a lone surrogate written as `\\ud800` in JSON) is never kept: Parquet, the tokenizer
and the gateway all need UTF-8.

This module imports nothing of prime-ray's, so any layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some editors (Notepad, Excel) write first


def decode(raw: bytes, *, first: bool = False) -> str:
    """`raw` as text; the byte-order mark is dropped when `first` (the file's first line or whole file)."""
    if first and raw.startswith(BOM):
        raw = raw[len(BOM):]
    return raw.decode("utf-8", errors="surrogateescape")


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for every line of a file. Raises OSError."""
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, decode(raw, first=number == 1).rstrip("\r\n")


def read_text(path: str | Path) -> str:
    """A whole file as text (see `decode`). Raises OSError."""
    return decode(Path(path).read_bytes(), first=True)


def not_utf8(text: str) -> str | None:
    """Why `text` cannot be stored as UTF-8, or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 in the file (see `decode`)
            return f"not valid UTF-8 (byte 0x{code - 0xDC00:02X})"
        return f"not valid UTF-8 (a lone surrogate U+{code:04X})"
    return None


def find_not_utf8(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first (dotted path, reason) in a parsed JSON document whose text is not UTF-8, or None.

    Keys are checked as well as string values; a key's path is the path of the object plus the key.
    """
    if isinstance(value, str):
        reason = not_utf8(value)
        return (path, reason) if reason else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = find_not_utf8(key, where) or find_not_utf8(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_not_utf8(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None
