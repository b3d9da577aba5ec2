"""A key written twice in a data file is a located problem, never a silent overwrite."""

from __future__ import annotations

import pytest

from prime_ray.data.adapters.lamp import read_lamp
from prime_ray.data.jsonl import read_jsonl
from prime_ray.data.validation import DataError


def test_a_jsonl_row_with_a_duplicate_key_is_a_problem_and_the_others_are_kept(fixtures_dir, tmp_path):
    good = (fixtures_dir / "data" / "native" / "users.jsonl").read_text().splitlines()
    twice = '{"user_id": "x", "user_id": "y", "history": [], "queries": []}'
    path = tmp_path / "users.jsonl"
    path.write_text("\n".join([good[0], twice, good[1]]) + "\n")
    result = read_jsonl(path)
    assert [u.user_id for u in result.users] == ["u1", "u2"]
    assert [str(p) for p in result.problems] == [f"{path}:2: invalid JSON: duplicate key 'user_id'"]


def test_a_lamp_file_with_a_duplicate_key_is_refused_by_name(fixtures_dir, tmp_path):
    folder = fixtures_dir / "data" / "lamp" / "LaMP_2"
    outputs = tmp_path / "dev_outputs.json"
    outputs.write_text('{"task": "LaMP_2", "task": "LaMP_3", "golds": []}')
    with pytest.raises(DataError, match=f"{outputs}: not valid JSON: duplicate key 'task'"):
        read_lamp(folder / "dev_questions.json", outputs)
