"""The native format: JSON Lines, one user per line (see schema.py and docs/data.md).

Every row is validated; a bad row is reported as `users.jsonl:7: history.2.output: field required`
and skipped, and reading goes on to the end of the file.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prime_ray.data.text import text_lines
from prime_ray.data.validation import DataError, LoadResult, RowValidator
from prime_ray.spec import DuplicateKey, TaskSpec, unique_keys


def json_lines(path: str | Path, validator: RowValidator) -> Iterator[tuple[int, Any]]:
    """(line number, parsed document) for each non-blank line; lines that cannot be parsed become problems.

    A byte-order mark before the first line is ignored; bytes that are not UTF-8 are reported at the
    field that holds them (see text.py). Numbers too long for Python's int parser and nesting deeper
    than the recursion limit are that line's problem, like any other invalid JSON.
    """
    try:
        lines = iter(text_lines(path))
        first = next(lines, None)  # opens the file: an unreadable one fails here, before any row
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    for number, text in itertools.chain([first] if first else [], lines):
        if not text.strip():
            continue
        try:
            document = json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as e:
            validator.problem(number, "", f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        except DuplicateKey as e:  # json.loads would keep the last value silently
            validator.problem(number, "", f"invalid JSON: {e}")
            continue
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            validator.problem(number, "", f"invalid JSON: {e}")
            continue
        except RecursionError:
            validator.problem(number, "", "invalid JSON: nested too deeply")
            continue
        yield number, document


def read_jsonl(path: str | Path, task: TaskSpec | None = None) -> LoadResult:
    """Read a native JSONL file: the valid users, and a problem for every bad row."""
    validator = RowValidator(str(path), task)
    for number, document in json_lines(path, validator):
        validator.add(document, line=number)
    return validator.result
