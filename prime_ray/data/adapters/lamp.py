"""LaMP (the Language Model Personalization benchmark): its questions JSON and outputs JSON.

    questions: [{"id": "310", "input": "<instruction> review: ...", "profile": [{"id": "3100", "text": "...", "score": "4"}, ...]}, ...]
    outputs:   {"task": "LaMP_3", "golds": [{"id": "310", "output": "5"}, ...]}

Each question is one user: its profile entries become the history and the question, with its gold
output, the one query. Which profile fields become an item's input and output depends on the task
(named by the outputs file); the table is in docs/data.md. The query's input is LaMP's input with the
task instruction removed (the text after `review: `, `article: `, ...), so queries and history items
have one shape and the instruction lives in the job spec's prompts. LaMP-1 keeps its whole input,
because the two candidate references are part of it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=unique_keys)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, DuplicateKey) as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None


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


def read_lamp(questions: str | Path, outputs: str | Path, task: TaskSpec | None = None) -> LoadResult:
    """Read a LaMP split; a question with any bad field (or without a gold output) is reported and skipped."""
    questions, outputs = Path(questions), Path(outputs)
    gold_doc = _load_json(outputs)
    if not isinstance(gold_doc, dict) or not isinstance(gold_doc.get("golds"), list):
        raise DataError(f'{outputs}: expected {{"task": "LaMP_N", "golds": [{{"id", "output"}}, ...]}}')
    task_name = str(gold_doc.get("task", "")).replace("-", "_")
    if task_name not in TASK_FIELDS:
        raise DataError(f"{outputs}: task {gold_doc.get('task')!r} is not one of {', '.join(TASK_FIELDS)}")
    choices = TASK_FIELDS[task_name]
    question_doc = _load_json(questions)
    if not isinstance(question_doc, list):
        raise DataError(f"{questions}: expected a JSON list of questions, got {json_type(question_doc)}")

    validator = RowValidator(str(questions), task, rename=_lamp_path)
    golds = _golds(gold_doc["golds"], str(outputs), validator)
    for index, question in enumerate(question_doc):
        document = _user(question, f"{index}.", golds, choices, validator)
        if document is not None:
            validator.add(document, at=f"{index}.")
    return validator.result


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


def _user(question: Any, at: str, golds: dict[str, str], choices: tuple[ProfileFields, ...],
          validator: RowValidator) -> dict[str, Any] | None:
    """A question as a native user document, or None after reporting why it cannot be one."""
    before = len(validator.result.problems)
    if not isinstance(question, dict):
        validator.problem(None, at.rstrip("."), f"expected a question object, got {json_type(question)}")
        return None
    qid, text, profile = _text(question.get("id")), question.get("input"), question.get("profile")
    if qid is None:
        validator.problem(None, at + "id", "expected a string id")
    if not isinstance(text, str):
        validator.problem(None, at + "input", f"expected a string, got {json_type(text)}")
    if not isinstance(profile, list):
        validator.problem(None, at + "profile", f"expected a list of profile entries, got {json_type(profile)}")
        profile = []
    if qid is not None and qid not in golds:
        validator.problem(None, at + "id", f"no gold output for question {qid!r} in the outputs file")

    entries = [entry for entry in profile if isinstance(entry, dict)]
    fields = next((f for f in choices if any(f.output in entry for entry in entries)), choices[0])
    history = []
    for j, entry in enumerate(profile):
        where = f"{at}profile.{j}"
        if not isinstance(entry, dict):
            validator.problem(None, where, f"expected a profile object, got {json_type(entry)}")
            continue
        item = {"id": _text(entry.get("id")), "input": _text(entry.get(fields.input)),
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
    if len(validator.result.problems) > before:
        return None
    query = {"id": qid, "input": _query_text(text, fields), "output": golds[qid]}
    return {"user_id": qid, "history": history, "queries": [query]}


def _lamp_path(native: str) -> str:
    """Native paths in LaMP's words: history is the profile, the query is the question and its gold."""
    parts = native.split(".")
    if parts[0] == "user_id":
        return "id"
    if parts[0] == "history":
        return ".".join(["profile", *parts[1:]])
    if parts[0] == "queries":
        return "output (gold)" if parts[-1] == "output" else parts[-1]
    return native
