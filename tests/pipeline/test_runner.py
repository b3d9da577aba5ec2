"""The runner on stages registered by the test: order, manifests, skip, re-run on change, resume, failure."""

import json

import pytest

from prime_ray.pipeline.events import read_events
from prime_ray.pipeline.runner import StageFailed, run_job
from prime_ray.pipeline.stage import STAGES, Stage, StageResult, register_stage, stage_order
from prime_ray.spec import parse_spec

CALLS: list[str] = []


class _First(Stage):
    name = "t_first"
    needs_ray = False
    outputs = ("first.json",)

    def config(self, spec):
        return spec.data.model_dump(mode="json")

    def run(self, ctx):
        CALLS.append(self.name)
        (ctx.out_dir / "first.json").write_text(json.dumps({"max_users": ctx.spec.data.max_users}))
        ctx.progress.update(1, 1, rows=1)
        return StageResult(counts={"rows": 1})


class _Second(Stage):
    name = "t_second"
    requires = ("t_first",)
    needs_ray = False
    outputs = ("second",)

    def config(self, spec):
        return spec.train.model_dump(mode="json")

    def run(self, ctx):
        CALLS.append(self.name)
        first = json.loads((ctx.inputs["t_first"] / "first.json").read_text())
        out = ctx.out_dir / "second"
        out.mkdir(exist_ok=True)
        done = sorted(p.name for p in out.iterdir())  # a partial earlier attempt to resume from
        if ctx.spec.train.seed == 13 and not done:
            (out / "part-0").write_text("x")
            raise RuntimeError("worker lost")
        (out / "part-1").write_text(json.dumps(first))
        return StageResult(counts={"parts": len(done) + 1}, metrics={"resumed_from": done})


@pytest.fixture
def stages(monkeypatch):
    saved = dict(STAGES)
    STAGES.clear()
    monkeypatch.setattr("prime_ray.pipeline.stage.stage_order", _test_order)
    monkeypatch.setattr("prime_ray.pipeline.runner.stage_order", _test_order)
    register_stage(_First)
    register_stage(_Second)
    CALLS.clear()
    yield
    STAGES.clear()
    STAGES.update(saved)


def _test_order(wanted=None):
    return [n for n in ("t_first", "t_second") if wanted is None or n in wanted or n == "t_first"]


def _spec(tmp_path, **train):
    return parse_spec({
        "name": "job",
        "artifact_root": str(tmp_path),
        "data": {"source": {"format": "jsonl", "path": "u.jsonl"}, "task": {"kind": "rating"}, "max_users": 3},
        "train": train,
    })


def test_runs_in_order_writes_manifests_and_events(tmp_path, stages):
    result = run_job(_spec(tmp_path))
    assert CALLS == ["t_first", "t_second"]
    assert [s.status for s in result.stages] == ["ran", "ran"]
    manifest = json.loads((tmp_path / "job" / "t_second" / "manifest.json").read_text())
    assert manifest["counts"] == {"parts": 1}
    assert set(manifest["outputs"]) == {"second/part-1"}
    kinds = [e.kind for _, e in read_events(tmp_path / "job" / "events.jsonl")]
    assert kinds[0] == "job_started" and kinds[-1] == "job_finished"
    assert kinds.count("stage_finished") == 2 and "progress" in kinds


def test_second_run_skips_and_config_change_reruns_only_downstream(tmp_path, stages):
    run_job(_spec(tmp_path))
    CALLS.clear()
    result = run_job(_spec(tmp_path))
    assert CALLS == [] and [s.status for s in result.stages] == ["skipped", "skipped"]

    result = run_job(_spec(tmp_path, lr=1e-3))  # train section: only t_second depends on it
    assert CALLS == ["t_second"]

    CALLS.clear()
    spec = _spec(tmp_path).model_copy(update={"data": _spec(tmp_path).data.model_copy(update={"max_users": 5})})
    run_job(spec)  # data changed: t_first reruns, and t_second because its input changed
    assert CALLS == ["t_first", "t_second"]


def test_tampered_output_reruns_the_stage(tmp_path, stages):
    run_job(_spec(tmp_path))
    (tmp_path / "job" / "t_first" / "first.json").write_text("{}")
    CALLS.clear()
    run_job(_spec(tmp_path))
    # t_first rewrites the same content, so t_second's input is unchanged and it stays skipped
    assert CALLS == ["t_first"]


def test_failure_names_the_stage_and_a_rerun_resumes_the_partial_attempt(tmp_path, stages):
    with pytest.raises(StageFailed, match="stage 't_second' failed: RuntimeError: worker lost"):
        run_job(_spec(tmp_path, seed=13))
    events = [e for _, e in read_events(tmp_path / "job" / "events.jsonl")]
    assert events[-1].kind == "job_failed" and events[-1].stage == "t_second"
    assert not (tmp_path / "job" / "t_second" / "manifest.json").exists()

    CALLS.clear()
    result = run_job(_spec(tmp_path, seed=13))
    assert CALLS == ["t_second"]  # t_first skipped
    assert result.outcome("t_second").manifest.metrics["resumed_from"] == ["part-0"]


def test_partial_attempt_of_another_config_is_discarded(tmp_path, stages):
    with pytest.raises(StageFailed):
        run_job(_spec(tmp_path, seed=13))
    result = run_job(_spec(tmp_path, seed=14))
    assert result.outcome("t_second").manifest.metrics["resumed_from"] == []


def test_builtin_stage_order_follows_requirements():
    order = stage_order()
    assert order[0] == "ingest"
    for name in order:
        for dep in STAGES[name].requires:
            assert order.index(dep) < order.index(name)
