"""The file helpers: atomic replacement and single-write appends."""

from __future__ import annotations

import pytest

from prime_ray.files import append_line, atomic_path, atomic_write


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_append_line_adds_whole_lines(tmp_path):
    target = tmp_path / "log" / "events.jsonl"
    append_line(target, '{"a": 1}')
    append_line(target, '{"b": 2}')
    assert target.read_text().splitlines() == ['{"a": 1}', '{"b": 2}']
