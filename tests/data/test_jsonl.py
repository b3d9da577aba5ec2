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


# ----------------------------------------------------------------------- any bytes, never a crash

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from prime_ray.data.store import write_users  # noqa: E402
from prime_ray.data.validation import Problem  # noqa: E402

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats()
    | st.text(st.characters(codec=None), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_item = st.fixed_dictionaries(
    {"id": st.text(max_size=4), "input": st.text(max_size=8), "output": st.text(max_size=4) | st.integers()},
    optional={"timestamp": st.integers(min_value=-(2**70), max_value=2**70) | st.floats(),
              "candidates": st.lists(st.text(max_size=3), max_size=3)},
)
_user = st.fixed_dictionaries(
    {"user_id": st.text(max_size=4) | st.integers()},
    optional={"profile": st.dictionaries(st.text(max_size=4), _json_values, max_size=3),
              "history": st.lists(_item, max_size=3), "queries": st.lists(_item, max_size=2)},
)


def _lines(draw_users, garbage):
    return b"\n".join(garbage if g else json.dumps(u, allow_nan=True).encode("utf-8", "surrogatepass")
                      for u, g in draw_users)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | st.lists(st.tuples(_user, st.booleans()), max_size=4).map(lambda us: _lines(us, b"\xef\xbb\xbf{\xff")),
       bom=st.booleans())
def test_any_bytes_give_users_or_located_problems(tmp_path, raw, bom):
    """Whatever the file holds: valid users that survive a Parquet write, and problems with file and line."""
    path = tmp_path / "any.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
    result = read_jsonl(path)
    lines = raw.count(b"\n") + 1
    for problem in result.problems:
        assert isinstance(problem, Problem) and problem.file == str(path)
        assert isinstance(problem.line, int) and 1 <= problem.line <= lines and problem.message
    assert len({u.user_id for u in result.users}) == len(result.users)
    write_users(tmp_path / "users.parquet", result.users, {u.user_id: "train" for u in result.users})
