import json
import subprocess
import sys

import jsonschema
import pytest

from prime_ray.spec import SpecError, load_spec, parse_spec, spec_json_schema

MINIMAL = {"name": "j1", "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating"}}}


def test_minimal_spec_gets_defaults():
    spec = parse_spec(MINIMAL)
    assert spec.model.name_or_path == "smollm2-135m-instruct"
    assert spec.train.think_weight == 1.0
    assert spec.data.task.kind == "rating"


def test_lambda_alias_and_yaml(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: j2\n"
        "data:\n  source: {format: movielens-100k, task: genre}\n"
        "  task: {kind: label, labels: [Drama, Comedy]}\n"
        "train:\n  lambda: 0\n  zero_stage: 3\n"
    )
    spec = load_spec(path)
    assert spec.train.think_weight == 0 and spec.train.zero_stage == 3
    assert spec.data.source.task == "genre"


def test_every_problem_listed_by_path():
    bad = {
        "name": "bad name",
        "data": {"source": {"format": "jsonl"}, "task": {"kind": "label", "labels": ["a"]}},
        "train": {"lora": {"r": 0}, "lambda": -1, "zero_stage": 5, "bogus": 1},
    }
    with pytest.raises(SpecError) as info:
        parse_spec(bad)
    paths = {p.path: p.message for p in info.value.problems}
    assert paths["train.lora.r"] == "must be > 0"
    assert paths["train.lambda"] == "must be >= 0.0"
    assert paths["train.bogus"] == "unknown field"
    assert paths["data.source.path"] == "field required"
    assert "data.task.labels" in paths and "train.zero_stage" in paths and "name" in paths


def test_task_must_fit_source():
    doc = {"name": "j", "data": {"source": {"format": "movielens-100k", "task": "genre"}, "task": {"kind": "rating"}}}
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    assert [p.path for p in info.value.problems] == ["data.task.kind"]


def test_unparseable_file_is_a_spec_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="line"):
        load_spec(path)


def test_schema_validates_a_real_spec():
    schema = spec_json_schema()
    jsonschema.validate(MINIMAL, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "j"}, schema)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "prime_ray", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_schema_and_validate(tmp_path):
    out = _cli("spec", "schema")
    assert out.returncode == 0
    assert json.loads(out.stdout)["title"] == "JobSpec"

    good = tmp_path / "good.json"
    good.write_text(json.dumps(MINIMAL))
    assert _cli("spec", "validate", str(good)).returncode == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: j\ndata:\n  source: {format: jsonl, path: x}\n  task: {kind: rating, min: 5, max: 1}\ntrain:\n  lora: {r: 0}\n  epochs: 0\n")
    out = _cli("spec", "validate", str(bad))
    assert out.returncode == 1
    assert "train.lora.r: must be > 0" in out.stderr
    assert "train.epochs: must be > 0" in out.stderr
    assert "data.task: max (1.0) must be greater than min (5.0)" in out.stderr


def test_old_train_names_are_deprecated_aliases_of_the_fields_names():
    doc = {**MINIMAL, "train": {"lr": 3e-4, "grad_clip": 0.5, "grad_accum": 4}}
    with pytest.warns(DeprecationWarning, match="train.lr is deprecated: use train.learning_rate"):
        spec = parse_spec(doc)
    assert (spec.train.learning_rate, spec.train.max_grad_norm, spec.train.gradient_accumulation_steps) == (3e-4, 0.5, 4)
    dumped = spec.model_dump(by_alias=True)["train"]
    assert "learning_rate" in dumped and "lr" not in dumped  # the spec is written back in the new names
    with pytest.raises(SpecError) as info:
        parse_spec({**MINIMAL, "train": {"lr": 1e-4, "learning_rate": 2e-4}})
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("train", "train.lr is the deprecated name of train.learning_rate: give only train.learning_rate")]


def test_derive_seed_names_independent_streams():
    from prime_ray.spec import derive_seed

    assert derive_seed(0, "split") == derive_seed(0, "split")
    seeds = {derive_seed(base, *labels) for base in (0, 1) for labels in [("split",), ("users",), ("traces", 0),
                                                                          ("traces", 1), ("train", 0)]}
    assert len(seeds) == 10 and all(0 <= s < 2**31 for s in seeds)


def test_every_section_and_field_is_described_in_the_schema():
    schema = spec_json_schema()
    missing = []
    for name, definition in {"JobSpec": schema, **schema["$defs"]}.items():
        if "properties" not in definition:
            continue  # enums
        if not definition.get("description"):
            missing.append(name)
        missing += [f"{name}.{field}" for field, prop in definition["properties"].items() if not prop.get("description")]
    assert missing == []
