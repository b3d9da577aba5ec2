"""Writing files safely: whole files replaced atomically, lines appended in one write.

Imports nothing else of prime-ray, so every layer can use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path` to write to; on a clean exit it replaces `path` (os.replace is
    atomic on one file system), so a reader sees the old file or the new one, never half of one. On an
    error the temporary file is removed and `path` is untouched. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers never share one
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Replace `path` with `data` (str is written as UTF-8) atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def append_line(path: str | Path, line: str) -> None:
    """Append `line` (a newline is added) in one write(2) to a file opened with O_APPEND: lines appended
    concurrently by other processes never interleave. Creates the file and its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
