"""LoRA target modules that match no module of the model are named before the job's first stage runs
(PEFT alone would adapt the others and silently ignore them)."""

from __future__ import annotations

import pytest

from prime_ray.pipeline.events import read_events
from prime_ray.pipeline.runner import StageFailed, run_job
from prime_ray.spec import LoraSpec, ModelSpec, parse_spec
from prime_ray.training.lora import attach_lora, check_target_modules, unmatched_target_modules

TYPOS = ["q_proj", "k_proj", "v_proj", "o_prj", "gate_projj"]
NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj",
         "lm_head"]


def test_unmatched_names_follow_peft_suffix_rule():
    assert unmatched_target_modules(["q_proj", "o_prj", "self_attn.o_proj", "proj", "gate_projj"], NAMES) == [
        "o_prj", "proj", "gate_projj"]
    assert unmatched_target_modules(["lm_head", "model.layers.0.mlp.gate_proj"], NAMES) == []
    assert unmatched_target_modules(["all-linear"], []) == []


def test_the_tiny_model_names_exactly_the_typos():
    with pytest.raises(ValueError) as info:
        check_target_modules(ModelSpec(name_or_path="tiny-test"), LoraSpec(target_modules=TYPOS))
    message = str(info.value)
    assert message.startswith("train.lora.target_modules: o_prj, gate_projj match no module of tiny-test")
    assert "o_proj" in message.split("its linear layers:")[1]  # what was meant is shown
    check_target_modules(ModelSpec(name_or_path="tiny-test"), LoraSpec())  # the defaults match
    check_target_modules(ModelSpec(name_or_path="tiny-test"), LoraSpec(target_modules=["all-linear"]))


def test_the_check_agrees_with_peft():
    """Names the check accepts are the ones PEFT adapts: built on the real tiny model."""
    from prime_ray.models.loading import load_model

    model, _ = load_model(ModelSpec(name_or_path="tiny-test"))
    peft_model = attach_lora(model, LoraSpec(target_modules=TYPOS))
    adapted = {name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj"}  # PEFT ignored the typos silently


def test_a_job_with_typos_fails_before_any_stage_runs(tmp_path, fixtures_dir):
    spec = parse_spec({
        "name": "typos", "artifact_root": str(tmp_path / "artifacts"), "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": str(fixtures_dir / "data" / "native" / "users.jsonl")},
                 "task": {"kind": "rating"}},
        "train": {"lora": {"target_modules": TYPOS}},
    })
    with pytest.raises(StageFailed) as info:
        run_job(spec)
    assert info.value.stage == "train" and "o_prj, gate_projj" in str(info.value)
    job_dir = tmp_path / "artifacts" / "typos"
    kinds = [event.kind for _, event in read_events(job_dir / "events.jsonl")]
    assert kinds == ["job_started", "job_failed"]  # no stage started: no data read, no trace generated
    assert not (job_dir / "ingest").exists() and not (job_dir / "traces").exists()
