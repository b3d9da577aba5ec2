"""LaMP (the Language Model Personalization benchmark): its questions JSON and outputs JSON.

    questions: [{"id": "310", "input": "<instruction> review: ...", "profile": [{"id": "3100", "text": "...", "score": "4"}, ...]}, ...]
    outputs:   {"task": "LaMP_3", "golds": [{"id": "310", "output": "5"}, ...]}

Users: when questions carry a `user_id` (LaMP's time-based files), one user per id, with all their
questions as queries and the union of their profiles (entries shared by questions kept once) as
history. Otherwise each question is one user (question ids are not user ids: one person's questions
share most of their profile, and the leakage check in sources.py removes the profile entries that
are another question's query). A question without a gold (a test split ships without outputs) is an
unlabelled query: its profile is still memory.

Layouts: the questions file is a list of questions, or LaMP's envelope `{"task": "LaMP_6", "golds":
[questions]}`. The task (which profile fields become an item's input and output, table in
docs/data.md) is named by the outputs file or the envelope, or inferred from the profile fields and
the inputs' marker when neither names it. The query's input is LaMP's input with the
task instruction removed (the text after `review: `, `article: `, ...), so queries and history items
have one shape and the instruction lives in the job spec's prompts. LaMP-1 keeps its whole input,
because the two candidate references are part of it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from prime_ray.data.schema import UserRecord
from prime_ray.data.text import find_not_utf8, read_text
from prime_ray.data.validation import DataError, LoadResult, Problem, RowValidator, json_type
from prime_ray.spec import DuplicateKey, TaskSpec, unique_keys


@dataclass(frozen=True)
class ProfileFields:
    """A history item's input and output fields, and the marker after which the query's own text starts."""

    input: str
    output: str
    query_marker: str | None


# Alternatives are tried in order per profile entry (LaMP-2 was news categorization before it became
# movie tagging; both versions are in use).
TASK_FIELDS: dict[str, tuple[ProfileFields, ...]] = {
    "LaMP_1": (ProfileFields("abstract", "title", None),),
    "LaMP_2": (ProfileFields("description", "tag", "description: "), ProfileFields("text", "category", "article: ")),
    "LaMP_3": (ProfileFields("text", "score", "review: "),),
    "LaMP_4": (ProfileFields("text", "title", "article: "),),
    "LaMP_5": (ProfileFields("abstract", "title", "paper: "),),
    "LaMP_6": (ProfileFields("text", "title", "email: "),),
    "LaMP_7": (ProfileFields("text", "text", "it: "),),
}


def _load_json(path: Path) -> Any:
    """A whole JSON file (a byte-order mark ignored; bytes that are not UTF-8 left for the rows to report)."""
    try:
        text = read_text(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
    except DuplicateKey as e:  # json.loads would keep the last value silently
        raise DataError(f"{path}: not valid JSON: {e}") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON: {e or 'nested too deeply'}") from None


def _text(value: Any) -> str | None:
    """LaMP writes ids and scores as strings, some copies as numbers: accept both, nothing else."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return None


def _timestamp(value: Any) -> int | None:
    """Profile dates ("2015-06-30", "2015", 2015) as Unix seconds (UTC); None when unparseable."""
    text = _text(value)
    if text is None:
        return None
    for pattern in ("%Y-%m-%d", "%Y"):
        try:
            return int(dt.datetime.strptime(text, pattern).replace(tzinfo=dt.timezone.utc).timestamp())
        except ValueError:
            continue
    return None


def _query_text(text: str, fields: ProfileFields) -> str:
    if fields.query_marker is None:
        return text
    _, marker, rest = text.partition(fields.query_marker)
    return rest.strip() if marker and rest.strip() else text


def _is_question(value: Any) -> bool:
    return isinstance(value, dict) and ("profile" in value or "input" in value)


def _questions(document: Any, path: Path) -> tuple[list[Any], str | None]:
    """The question list and the task the file names: a bare list, or LaMP's envelope around it."""
    if isinstance(document, list):
        return document, None
    if isinstance(document, dict) and isinstance(document.get("golds"), list) and (
            not document["golds"] or _is_question(document["golds"][0])):
        return document["golds"], _text(document.get("task"))
    raise DataError(f'{path}: expected a JSON list of questions (or {{"task": "LaMP_N", "golds": [questions]}}), '
                    f"got {json_type(document)}")


def _task_name(name: str | None, where: Path) -> str:
    task = (name or "").replace("-", "_")
    if task not in TASK_FIELDS:
        raise DataError(f"{where}: task {name!r} is not one of {', '.join(TASK_FIELDS)}")
    return task


def infer_task(questions: list[Any]) -> str | None:
    """The LaMP task of questions whose file does not name it (a test split): by profile fields, then
    by the marker in the questions' inputs (`email: ` is LaMP_6, `article: ` LaMP_4). None when unclear."""
    keys = {key for q in questions[:50] if isinstance(q, dict) and isinstance(q.get("profile"), list)
            for entry in q["profile"] if isinstance(entry, dict) for key in entry}
    inputs = [text for q in questions[:50] if isinstance(q, dict) and isinstance(text := q.get("input"), str)]
    fitting = [(name, fields) for name, choices in TASK_FIELDS.items() for fields in choices
               if fields.input in keys and fields.output in keys]
    if len(fitting) > 1:  # LaMP_7 (text -> text) fits every profile with a text: only when nothing else does
        fitting = [(name, fields) for name, fields in fitting if fields.input != fields.output]
    if len(fitting) > 1:
        marked = [(name, f) for name, f in fitting if f.query_marker and all(f.query_marker in t for t in inputs)]
        fitting = marked or [(name, f) for name, f in fitting if f.query_marker is None]
    names = {name for name, _ in fitting}
    return names.pop() if len(names) == 1 else None


def read_lamp(questions: str | Path, outputs: str | Path | None = None, task: TaskSpec | None = None) -> LoadResult:
    """Read a LaMP split (see the module docstring): one user per `user_id`, else one per question.

    Without `outputs` (a test split) or without a gold for a question, the question is an unlabelled
    query; its profile is still the user's history. Raises DataError when a file cannot be read at all
    or the task cannot be told.
    """
    questions = Path(questions)
    question_list, named_task = _questions(_load_json(questions), questions)
    golds: dict[str, str] = {}
    validator = RowValidator(str(questions), task)
    if outputs is not None:
        outputs = Path(outputs)
        gold_doc = _load_json(outputs)
        if not isinstance(gold_doc, dict) or not isinstance(gold_doc.get("golds"), list):
            raise DataError(f'{outputs}: expected {{"task": "LaMP_N", "golds": [{{"id", "output"}}, ...]}}')
        task_name = _task_name(_text(gold_doc.get("task")), outputs)
        golds = _golds(gold_doc["golds"], str(outputs), validator)
    elif named_task is not None:
        task_name = _task_name(named_task, questions)
    else:
        inferred = infer_task(question_list)
        if inferred is None:
            raise DataError(f"{questions}: cannot tell which LaMP task these questions are (no outputs file, "
                            "no task in the file, profile fields fit several tasks); give the outputs file")
        task_name = inferred
    choices = TASK_FIELDS[task_name]

    by_user: dict[str, list[tuple[str, UserRecord]]] = {}  # user id -> (where, one question as a user)
    unlabelled = 0
    for index, question in enumerate(question_list):
        at = f"{index}."
        found = find_not_utf8(question, at.rstrip("."))
        if found is not None:
            validator.problem(None, *found)
            continue
        document, fields = _question(question, at, golds, choices, validator)
        if document is None:
            continue
        one = validator.check(document, at=at, rename=partial(_lamp_path, fields=fields))
        if one is None:
            continue
        unlabelled += one.queries[0].output is None
        owner = _text(question.get("user_id")) or one.user_id
        by_user.setdefault(owner, []).append((at, one))

    with_user_id = any(isinstance(q, dict) and "user_id" in q for q in question_list)
    seen_questions: dict[str, str] = {}
    for owner, asked in by_user.items():
        user = _merge(owner, asked, seen_questions, validator)
        if user is not None and not validator.duplicate(user.user_id, at=asked[0][0]):
            validator.keep(user, at=asked[0][0])
    result = validator.result
    if not with_user_id:
        result.notes.append("LaMP questions without user_id: each question is read as its own user; question "
                            "ids are not user ids (one person's questions share profile items: the leakage "
                            "check removes those that are another question's query)")
    if unlabelled:
        result.notes.append(f"{unlabelled} question(s) without a gold output: kept as unlabelled queries "
                            "(their profiles are memory; nothing scores them)")
    return result


def _merge(owner: str, asked: list[tuple[str, UserRecord]], seen_questions: dict[str, str],
           validator: RowValidator) -> UserRecord | None:
    """One user from all the questions of `owner`: every question a query, the union of profiles the history.

    A profile entry shared by several questions (the same id) is kept once; a question id asked twice
    is reported and the second one skipped.
    """
    history: dict[str, Any] = {}
    queries = []
    for at, one in asked:
        query = one.queries[0]
        if query.id in seen_questions:
            validator.problem(None, at + "id", f"duplicate question id {query.id!r} (also {seen_questions[query.id]}id)")
            continue
        seen_questions[query.id] = at
        queries.append(query)
        for item in one.history:
            history.setdefault(item.id, item)
    if not queries:
        return None
    query_ids = {query.id for query in queries}
    # A profile entry with a question's id cannot share the user's id space with it: the question wins.
    items = [item for item_id, item in history.items() if item_id not in query_ids]
    return UserRecord(user_id=owner, profile=asked[0][1].profile, history=items, queries=queries)


def _golds(entries: list[Any], file: str, validator: RowValidator) -> dict[str, str]:
    golds: dict[str, str] = {}
    for index, entry in enumerate(entries):
        key = _text(entry.get("id")) if isinstance(entry, dict) else None
        output = _text(entry.get("output")) if isinstance(entry, dict) else None
        if key is None or output is None:
            validator.result.problems.append(
                Problem(file, None, f"golds.{index}", 'expected {"id": string, "output": string}'))
        else:
            golds[key] = output
    return golds


def _question(question: Any, at: str, golds: dict[str, str], choices: tuple[ProfileFields, ...],
              validator: RowValidator) -> tuple[dict[str, Any] | None, ProfileFields]:
    """A question as a native user document (and the fields it was read with), or None after reporting why not."""
    before = len(validator.result.problems)
    if not isinstance(question, dict):
        validator.problem(None, at.rstrip("."), f"expected a question object, got {json_type(question)}")
        return None, choices[0]
    qid, text, profile = _text(question.get("id")), question.get("input"), question.get("profile")
    if qid is None:
        validator.problem(None, at + "id", "expected a string id")
    if not isinstance(text, str):
        validator.problem(None, at + "input", f"expected a string, got {json_type(text)}")
    if not isinstance(profile, list):
        validator.problem(None, at + "profile", f"expected a list of profile entries, got {json_type(profile)}")
        profile = []
    if "user_id" in question and _text(question["user_id"]) in (None, ""):
        validator.problem(None, at + "user_id", f"expected a non-empty string, got {json_type(question['user_id'])}")

    entries = [entry for entry in profile if isinstance(entry, dict)]
    fields = next((f for f in choices if any(f.output in entry for entry in entries)), choices[0])
    history = []
    for j, entry in enumerate(profile):
        where = f"{at}profile.{j}"
        if not isinstance(entry, dict):
            validator.problem(None, where, f"expected a profile object, got {json_type(entry)}")
            continue
        item: dict[str, str | int | None] = {"id": _text(entry.get("id")), "input": _text(entry.get(fields.input)),
                                             "output": _text(entry.get(fields.output))}
        for key, name in (("id", "id"), ("input", fields.input), ("output", fields.output)):
            if item[key] is None:
                got = "field required" if name not in entry else f"expected a string, got {json_type(entry[name])}"
                validator.problem(None, f"{where}.{name}", got)
        if "date" in entry:
            item["timestamp"] = _timestamp(entry["date"])
            if item["timestamp"] is None:
                validator.problem(None, f"{where}.date", f"expected YYYY-MM-DD or a year, got {entry['date']!r}")
        history.append(item)
    # a missing id or input is one of the problems reported above
    if len(validator.result.problems) > before or qid is None or not isinstance(text, str):
        return None, fields
    query = {"id": qid, "input": _query_text(text, fields), "output": golds.get(qid)}
    return {"user_id": qid, "history": history, "queries": [query]}, fields


def _lamp_path(native: str, fields: ProfileFields) -> str:
    """Native paths in LaMP's words: history is the profile (`profile.3.text`), the query is the question."""
    parts = native.split(".")
    if parts[0] == "user_id":
        return "id"
    if parts[0] == "history":
        names = {"input": fields.input, "output": fields.output, "timestamp": "date"}
        return ".".join(["profile", *(names.get(part, part) for part in parts[1:])])
    if parts[0] == "queries":
        return "output (gold)" if parts[-1] == "output" else parts[-1]
    return native
