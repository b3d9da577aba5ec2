"""Row validation shared by every reader: problems that name the file, line, field and what was expected.

A reader hands each user document (one JSON line, one LaMP question, one author's threads) to a
`RowValidator`. A document with any problem is rejected whole and reported; the others are kept, so
one bad row never costs the good ones. Checks: text that is not UTF-8 (text.py), the native schema
(schema.py, including 64-bit integer ranges), duplicate user ids across rows, duplicate item ids
within a user (history and queries share one id space, because example ids are built from the user
and item ids), and, when a task is given, whether each output fits it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError

from prime_ray.data.schema import INT64_MAX, INT64_MIN, Item, UserRecord
from prime_ray.data.text import find_not_utf8
from prime_ray.spec import TaskSpec
from prime_ray.tasks import task_kind
from prime_ray.tasks.base import shown


class DataError(ValueError):
    """A source that cannot be read at all (missing file, unreachable download); rows are never at fault."""


@dataclass(frozen=True)
class Problem:
    """One bad row: `file:line: field: message`. `line` is None where the format has no lines (JSON arrays)."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadResult:
    """The valid users of a source, in source order, and every problem found on the way."""

    users: list[UserRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    lines: dict[str, int | None] = field(default_factory=dict)  # user id -> the line it was read from
    leaks: int = 0  # history items removed because a query's input was among them (see leakage.py)
    notes: list[str] = field(default_factory=list)  # what a reader of `data stats` must know about the source
    file: str | None = None  # the file that holds the users' items, where one does (MovieLens's .inter)
    item_lines: dict[tuple[str, str], int] = field(default_factory=dict)  # (user, item) -> line, where items have lines


def json_type(value: Any) -> str:
    """A value's type as JSON names it, for messages ("expected a string, got number 4")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_shown = shown  # a value in a message, cut to 40 characters (the task kinds' messages use the same)


_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected a whole number",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
}


def describe_error(error: Mapping[str, Any]) -> tuple[str, str]:
    """A pydantic error as (dotted field path, message in the words of the data's author)."""
    path = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return path, "field required"
    if kind == "extra_forbidden":
        return path, "unknown field"
    if kind == "string_too_short":
        return path, "must not be empty"
    if kind in ("greater_than_equal", "less_than_equal") and error.get("ctx", {}).get(
            "ge" if kind == "greater_than_equal" else "le") in (INT64_MIN, INT64_MAX):
        return path, f"out of range (a 64-bit integer: {INT64_MIN}..{INT64_MAX}), got {_shown(error.get('input'))}"
    if kind in _EXPECTED:
        value = error.get("input")
        return path, f"{_EXPECTED[kind]}, got {json_type(value)} {_shown(value)}"
    message = error["msg"]
    return path, message.removeprefix("Value error, ")


def task_problem(item: Item, task: TaskSpec) -> tuple[str, str] | None:
    """Whether an item's output fits the job's task (the task kind's rule); (field, message) when it does not.

    An unlabelled query (output None) fits every task: it has no output to check.
    """
    if item.output is None:
        return None
    return task_kind(task).output_problem(task, item.output, item.candidates)


class RowValidator:
    """Validates user documents one row at a time, remembering user ids across rows.

    `file` names the source in problems; `rename` maps a native field path (`history.2.output`) to
    the same place in the source's own format (`threads.2.replies`), so a problem points at what its
    author wrote.
    """

    def __init__(
        self,
        file: str,
        task: TaskSpec | None = None,
        rename: Callable[[str], str] | None = None,
    ):
        self.file = file
        self.task = task
        self.rename = rename or (lambda path: path)
        self.result = LoadResult()
        self._first_seen: dict[str, int | str | None] = {}

    def problem(self, line: int | None, path: str, message: str) -> None:
        self.result.problems.append(Problem(self.file, line, path, message))

    def add(self, document: Any, *, line: int | None = None, at: str = "") -> UserRecord | None:
        """Validate one user document; keep it when it is sound, else record why and drop it.

        `at` prefixes field paths where the row has no line of its own (e.g. `12.` for a JSON array).
        """
        user = self.check(document, line=line, at=at)
        if user is None or self.duplicate(user.user_id, line=line, at=at):
            return None
        self.keep(user, line=line, at=at)
        return user

    def check(self, document: Any, *, line: int | None = None, at: str = "",
              rename: Callable[[str], str] | None = None) -> UserRecord | None:
        """Validate one user document without keeping it: the user, or None after reporting why not.

        `rename` overrides the validator's for this document (LaMP's field names differ per task).
        """
        rename = rename or self.rename
        if not isinstance(document, dict):
            self.problem(line, at.rstrip("."), f"expected a JSON object (one user), got {json_type(document)}")
            return None
        try:
            # First: pydantic would call such text "not a unicode string" without saying why.
            found = find_not_utf8(document)
            if found is not None:
                self.problem(line, at + rename(found[0]), found[1])
                return None
            user = UserRecord.model_validate(document)
        except ValidationError as e:
            for error in e.errors():
                path, message = describe_error(error)
                self.problem(line, at + rename(path), message)
            return None
        except RecursionError:
            self.problem(line, at.rstrip("."), "nested too deeply")
            return None
        return None if self._check(user, line, at, rename) else user

    def duplicate(self, user_id: str, *, line: int | None = None, at: str = "") -> bool:
        """Whether `user_id` was kept before (then reported here as a duplicate)."""
        if user_id not in self._first_seen:
            return False
        first = self._first_seen[user_id]
        where = f"on line {first}" if isinstance(first, int) else f"at {first}"
        self.problem(line, at + self.rename("user_id"), f"duplicate user id {user_id!r} (first {where})")
        return True

    def keep(self, user: UserRecord, *, line: int | None = None, at: str = "") -> None:
        self._first_seen[user.user_id] = line if line is not None else at.rstrip(".")
        self.result.users.append(user)
        self.result.lines[user.user_id] = line

    def _check(self, user: UserRecord, line: int | None, at: str, rename: Callable[[str], str]) -> bool:
        before = len(self.result.problems)
        seen: dict[str, str] = {}
        for part in ("history", "queries"):
            for index, item in enumerate(getattr(user, part)):
                path = f"{part}.{index}"
                if item.id in seen:
                    self.problem(line, at + rename(f"{path}.id"),
                                 f"duplicate item id {item.id!r} (also {at + rename(seen[item.id])})")
                else:
                    seen[item.id] = path
                if self.task is not None:
                    wrong = task_problem(item, self.task)
                    if wrong is not None:
                        self.problem(line, at + rename(f"{path}.{wrong[0]}"), wrong[1])
        return len(self.result.problems) > before

