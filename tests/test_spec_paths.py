"""Relative paths in a spec file resolve against the file's folder, not the current directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from prime_ray.spec import load_spec, parse_spec, resolve_spec_paths

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "e2e" / "users.jsonl"
ROOT = Path(__file__).resolve().parents[1]


def _doc(source: dict, **extra) -> dict:
    return {"name": "paths", "data": {"source": source, "task": {"kind": "rating"}}, **extra}


def test_relative_paths_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "models" / "mine").mkdir(parents=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(_doc({"format": "jsonl", "path": "data/users.jsonl"},
                                        model={"name_or_path": "models/mine"}, artifact_root="../out")))
    monkeypatch.chdir(tmp_path)  # anywhere but the spec's folder
    spec = load_spec("project/spec.yaml")
    assert spec.data.source.path == str(folder / "data" / "users.jsonl")
    assert spec.model.name_or_path == str(folder / "models" / "mine")
    assert spec.artifact_root == str(tmp_path / "out")


def test_uris_absolute_paths_and_model_names_are_unchanged(tmp_path):
    base = tmp_path
    for source in ({"format": "jsonl", "path": "s3://bucket/users.jsonl"}, {"format": "jsonl", "path": "/abs/u.jsonl"},
                   {"format": "jsonl", "path": "~/u.jsonl"}):
        spec = resolve_spec_paths(parse_spec(_doc(source, artifact_root="gs://b/jobs")), base)
        assert spec.data.source.path == source["path"] and spec.artifact_root == "gs://b/jobs"
    for name in ("tiny-test", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct"):
        spec = resolve_spec_paths(parse_spec(_doc({"format": "jsonl", "path": "u.jsonl"}, model={"name_or_path": name})), base)
        assert spec.model.name_or_path == name
    spec = resolve_spec_paths(parse_spec(_doc({"format": "jsonl", "path": "u.jsonl"}, model={"name_or_path": "./m"})), base)
    assert spec.model.name_or_path == str(base / "m")
    lamp = resolve_spec_paths(parse_spec({"name": "l", "data": {
        "source": {"format": "lamp", "questions": "q.json", "outputs": "o.json"}, "task": {"kind": "text"}}}), base)
    assert (lamp.data.source.questions, lamp.data.source.outputs) == (str(base / "q.json"), str(base / "o.json"))
    movielens = resolve_spec_paths(parse_spec(_doc({"format": "movielens-100k"})), base)
    assert movielens.data.source.path is None  # the packaged copy


def test_a_spec_run_from_another_folder_finds_its_data_and_writes_beside_it(tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "users.jsonl").write_bytes(FIXTURE.read_bytes())
    (project / "spec.yaml").write_text(yaml.safe_dump({
        "name": "elsewhere", "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": "data/users.jsonl"}, "task": {"kind": "rating"}},
        "stages": ["ingest"],
    }))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "prime_ray", "run", str(project / "spec.yaml")], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "artifacts" / "elsewhere" / "ingest" / "manifest.json").is_file()
    assert not (elsewhere / "artifacts").exists()
