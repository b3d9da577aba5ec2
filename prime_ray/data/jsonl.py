"""The native format: JSON Lines, one user per line (see schema.py and docs/data.md).

Every row is validated; a bad row is reported as `users.jsonl:7: history.2.output: field required`
and skipped, and reading goes on to the end of the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from prime_ray.data.validation import DataError, LoadResult, RowValidator
from prime_ray.spec import DuplicateKey, TaskSpec, unique_keys


def json_lines(path: str | Path, validator: RowValidator) -> Iterator[tuple[int, Any]]:
    """(line number, parsed document) for each non-blank line; undecodable lines become problems."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                validator.problem(number, "", f"not valid UTF-8 (byte {e.start})")
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                yield number, json.loads(text, object_pairs_hook=unique_keys)
            except json.JSONDecodeError as e:
                validator.problem(number, "", f"invalid JSON: {e.msg} (column {e.colno})")
            except DuplicateKey as e:  # json.loads would keep the last value silently
                validator.problem(number, "", f"invalid JSON: {e}")


def read_jsonl(path: str | Path, task: TaskSpec | None = None) -> LoadResult:
    """Read a native JSONL file: the valid users, and a problem for every bad row."""
    validator = RowValidator(str(path), task)
    for number, document in json_lines(path, validator):
        validator.add(document, line=number)
    return validator.result
