"""Reading a spec someone wrote: duplicate keys, non-finite numbers, huge integers, lone surrogates,
hostile nesting. Each is a located SpecError, on the real CLI and in the library; never another exception."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from prime_ray.spec import JobSpec, SpecError, load_spec, parse_json, parse_spec, parse_yaml

MINIMAL = {"name": "j1", "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating"}}}

DUPLICATE_TRAIN = """\
name: dup
data:
  source: {format: jsonl, path: users.jsonl}
  task: {kind: rating}
train:
  max_length: 256
  max_length: 128
  lr: 0.001
train:
  epochs: 2
"""


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prime_ray", "spec", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)


def _problems(error: SpecError) -> dict[str, str]:
    return {p.path: p.message for p in error.problems}


def test_cli_refuses_a_duplicate_key_with_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATE_TRAIN)
    out = _validate(path)
    assert out.returncode == 1
    assert "train: duplicate key (line 9, first on line 5)" in out.stderr
    assert "train.max_length: duplicate key (line 7, first on line 6)" in out.stderr


def test_duplicate_keys_in_a_json_spec_are_located_too(tmp_path):
    text = '{\n  "name": "a",\n  "data": {"source": {"format": "jsonl", "path": "u.jsonl"},\n' \
           '           "task": {"kind": "rating"}},\n  "seed": 1,\n  "seed": 2\n}\n'
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert _problems(info.value) == {"seed": "duplicate key (line 6, first on line 5)"}
    with pytest.raises(SpecError) as info:
        parse_json(text)  # the gateway's JSON reader
    assert _problems(info.value) == {"seed": "duplicate key (line 6, first on line 5)"}
    with pytest.raises(SpecError) as info:
        parse_json('{"a": [{"b": 1, "b": 1}]}')
    assert _problems(info.value) == {"a.0.b": "duplicate key (line 1, first on line 1)"}


def test_keys_equal_after_reading_are_duplicates_and_merge_keys_are_refused():
    with pytest.raises(SpecError) as info:
        parse_yaml("seed: 1\nseed: 0x1\n1: a\n0x1: b\n")
    assert _problems(info.value) == {"seed": "duplicate key (line 2, first on line 1)",
                                     "0x1": "duplicate key (line 4, first on line 3)"}
    with pytest.raises(SpecError) as info:
        parse_yaml("train: {<<: {lr: 0.1}, lr: 0.2}\n")
    assert _problems(info.value) == {"train.<<": "YAML merge keys are not accepted (line 1)"}


def test_cli_refuses_non_finite_numbers(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("name: nan\ndata:\n  source: {format: jsonl, path: users.jsonl}\n"
                    "  task: {kind: rating, min: .nan}\ntraces:\n  temperature: .inf\n")
    out = _validate(path)
    assert out.returncode == 1
    assert "data.task.min: must be a finite number" in out.stderr
    assert "traces.temperature: must be a finite number" in out.stderr


def _float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Paths (by alias) of every float field of the spec, found from the models themselves."""
    paths = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        members = typing.get_args(annotation) or (annotation,)
        if float in members:
            paths.append(key)
        for member in members:
            if isinstance(member, type) and issubclass(member, BaseModel):
                paths += _float_fields(member, key + ".")
    return paths


FLOAT_FIELDS = _float_fields(JobSpec)


def _with(document: dict, path: str, value) -> dict:
    document = json.loads(json.dumps(document))
    *parents, leaf = path.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return document


def test_the_float_fields_are_found():
    assert {"traces.temperature", "train.lambda", "train.learning_rate", "generalist.num_cpus_per_replica"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("path", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_refuses_non_finite_numbers(path, value):
    # a source's own fields need that source (MovieLens is the one with a float field)
    base = _with(MINIMAL, "data.source", {"format": "movielens-100k"}) if path.startswith("data.source.") else MINIMAL
    document = _with(base, path, value)
    with pytest.raises(SpecError) as info:
        parse_spec(document)
    assert _problems(info.value) == {path: "must be a finite number"}


@pytest.mark.parametrize("value", [.5, 2.0])
def test_rating_task_floats_still_work(value):
    spec = parse_spec(_with(_with(MINIMAL, "data.task.min", value), "data.task.max", 5))
    assert spec.data.task.min == value


def test_integers_beyond_64_bits_and_lone_surrogates_are_located(tmp_path):
    document = _with(_with(MINIMAL, "seed", 881250949000000000000), "train.max_steps", -(2**63) - 1)
    document["data"]["source"]["path"] = "users\ud800.jsonl"
    document["bogus\udfff"] = 1
    with pytest.raises(SpecError) as info:
        parse_spec(document)
    problems = _problems(info.value)
    assert problems == {
        "seed": "out of range (integers must fit in 64 bits)",
        "train.max_steps": "out of range (integers must fit in 64 bits)",
        "data.source.path": "not valid Unicode text (a lone surrogate)",
        "bogus\\udfff": "key is not valid Unicode text (a lone surrogate)",
    }
    str(info.value).encode("utf-8")  # the message itself can be printed anywhere
    assert parse_spec(_with(MINIMAL, "seed", 2**63 - 1)).seed == 2**63 - 1
    path = tmp_path / "surrogate.json"
    path.write_text('{"name": "a\\ud800", "data": {"source": {"format": "jsonl", "path": "u"}, "task": {"kind": "rating"}}}')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert _problems(info.value) == {"name": "not valid Unicode text (a lone surrogate)"}


@pytest.mark.parametrize("text,message", [
    ("a: " + "[" * 8000 + "]" * 8000, "nested deeper than 32 levels"),
    ("".join("  " * i + "-\n" for i in range(40)), "nested deeper than 32 levels"),
    ("a: &x [1]\nb: *x\n", "YAML aliases (*name) are not accepted"),
    ("seed: " + "9" * 5000 + "\n", "cannot read the document"),
    ("a: 2020-13-45\n", "cannot read the document"),
    ("a: 1\n---\nb: 2\n", "expected a single document"),
    ("a: !!python/object:os.system x\n", "could not determine a constructor"),
    ("x" * (1 << 20) + "x", "a spec is at most 1048576 characters"),
])
def test_hostile_documents_are_refused_with_a_reason(text, message):
    with pytest.raises(SpecError) as info:
        parse_yaml(text)
    assert message in str(info.value)


def test_a_json_document_nested_past_the_bound_is_refused():
    with pytest.raises(SpecError) as info:
        parse_spec(_with(MINIMAL, "data.extra", json.loads("[" * 40 + "]" * 40)))
    assert any(p.message == "nested deeper than 32 levels" for p in info.value.problems)
    with pytest.raises(SpecError, match="cannot read the document"):
        parse_json("[" * 100_000 + "]" * 100_000)


def test_undecodable_spec_file_is_a_spec_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match=r"not valid UTF-8 \(line 1, byte 0xE9\)"):
        load_spec(path)


# ------------------------------------------------------------------------------- properties

def _leaves():
    return (st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True)
            | st.integers(min_value=-(2**70), max_value=2**70) | st.text(st.characters(codec=None), max_size=12))


JSONISH = st.recursive(_leaves(), lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(st.characters(codec=None), max_size=8), inner, max_size=4), max_leaves=20)
SPEC_KEYS = st.sampled_from(["name", "seed", "data", "model", "train", "traces", "eval", "memory", "stages",
                             "resources", "generalist", "artifact_root"])


def _check_outcome(read):
    """The reader's contract: a JobSpec, or a SpecError whose every problem is printable text."""
    try:
        result = read()
    except SpecError as e:
        assert e.problems
        for problem in e.problems:
            assert isinstance(problem.path, str) and problem.message
            str(problem).encode("utf-8")
        return None
    assert isinstance(result, JobSpec)
    json.dumps(result.model_dump(mode="json"), allow_nan=False, ensure_ascii=False).encode("utf-8")
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(st.characters(codec=None), max_size=300))
def test_any_text_is_a_spec_or_a_located_error(text):
    _check_outcome(lambda: parse_spec(parse_yaml(text)))
    _check_outcome(lambda: parse_spec(parse_json(text)))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(SPEC_KEYS, JSONISH, max_size=3),
       task=st.dictionaries(st.sampled_from(["kind", "min", "max", "integer", "tolerance", "labels"]), JSONISH, max_size=3))
def test_any_document_near_a_spec_is_a_spec_or_a_located_error(changes, task):
    document = {**_with(MINIMAL, "data.task", {"kind": "rating", **task}), **changes}
    _check_outcome(lambda: parse_spec(document))
    # and the same document written as YAML, then as JSON, read back by the file readers
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        text = None
    if text is not None:
        _check_outcome(lambda: parse_spec(parse_yaml(text)))
    _check_outcome(lambda: parse_spec(parse_json(json.dumps(document))))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: ("name: x\n" + t).encode("utf-8", "surrogatepass")))
def test_any_file_is_a_spec_or_a_located_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_bytes(raw)
    _check_outcome(lambda: load_spec(path))
