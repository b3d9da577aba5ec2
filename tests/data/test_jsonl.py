"""The native JSONL reader: every bad row reported by file, line and field; every good row kept."""

import json

import pytest

from prime_ray.data.jsonl import read_jsonl
from prime_ray.data.validation import DataError
from prime_ray.spec import LabelTask, RankingTask, RatingTask


def test_good_file_loads_every_user(fixtures_dir):
    result = read_jsonl(fixtures_dir / "data" / "native" / "users.jsonl")
    assert result.problems == []
    assert [u.user_id for u in result.users] == ["u1", "u2", "u3", "u4", "u5", "u6"]
    u3 = result.users[2]
    assert len(u3.history) == 5 and len(u3.queries) == 1
    assert u3.history[0].input == "Toy Story (1995). Genres: Animation" and u3.history[0].output == "4"
    assert u3.profile == {"age": 30}


def test_bad_rows_are_reported_with_file_line_field_and_good_rows_kept(fixtures_dir):
    path = fixtures_dir / "data" / "native" / "bad.jsonl"
    result = read_jsonl(path)
    assert [u.user_id for u in result.users] == ["a", "i", "j"]
    shown = [str(p) for p in result.problems]
    expected = [
        (2, "", "invalid JSON"),
        (3, "history.2.output", "field required"),
        (4, "user_id", "duplicate user id 'a' (first on line 1)"),
        (5, "history.1.id", "duplicate item id 'h1' (also history.0)"),
        (6, "queries.0.candidates", "the output 'the third' is not among the 2 candidates"),
        (7, "history.0.output", "expected a string, got number 4"),
        (9, "history.0.rating", "unknown field"),
        (10, "", "expected a JSON object"),
    ]
    assert len(result.problems) == len(expected), shown
    for problem, (line, field, message) in zip(result.problems, expected):
        assert problem.file == str(path) and problem.line == line and problem.field == field
        assert message in problem.message
    assert shown[1] == f"{path}:3: history.2.output: field required"


def test_task_checks_outputs_when_given(fixtures_dir):
    path = fixtures_dir / "data" / "native" / "bad.jsonl"
    result = read_jsonl(path, RatingTask(min=1, max=5))
    assert [u.user_id for u in result.users] == ["a", "i"]
    assert str(result.problems[-1]) == f"{path}:12: history.0.output: rating 9 is outside 1..5"


@pytest.mark.parametrize(
    ("task", "item", "field", "message"),
    [
        (LabelTask(labels=["Drama", "Comedy"]), {"output": "western"}, "output", "not one of the task's labels"),
        (LabelTask(labels=["Drama", "Comedy"]), {"output": "drama"}, None, None),  # labels match case-insensitively
        (RatingTask(), {"output": "four"}, "output", "expected a rating from 1 to 5"),
        (RatingTask(), {"output": "3.5"}, "output", "expected a whole-number rating"),
        (RatingTask(integer=False), {"output": "3.5"}, None, None),
        (RankingTask(), {"output": "x"}, "candidates", "at least 2 candidates"),
        (RankingTask(), {"output": "x", "candidates": ["x", "y"]}, None, None),
    ],
)
def test_task_fit(tmp_path, task, item, field, message):
    row = {"user_id": "u", "history": [{"id": "h", "input": "something", **item}]}
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps(row) + "\n")
    result = read_jsonl(path, task)
    if field is None:
        assert result.problems == [] and len(result.users) == 1
    else:
        assert len(result.problems) == 1 and result.users == []
        assert result.problems[0].field == f"history.0.{field}" and message in result.problems[0].message


def test_undecodable_line_is_a_problem_and_reading_goes_on(tmp_path):
    path = tmp_path / "u.jsonl"
    good = json.dumps({"user_id": "ok", "history": [{"id": "h", "input": "x", "output": "1"}]})
    path.write_bytes(b'{"user_id": "\xff"}\n' + good.encode() + b"\n")
    result = read_jsonl(path)
    assert [u.user_id for u in result.users] == ["ok"]
    assert result.problems[0].line == 1 and "UTF-8" in result.problems[0].message


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read .*nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")
