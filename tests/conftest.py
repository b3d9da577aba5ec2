"""Shared test setup: caches inside the checkout, no downloads, one local Ray per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PRIME_RAY_CACHE_DIR", str(ROOT / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from prime_ray.paths import configure_environment  # noqa: E402

configure_environment()


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, shared by every test that needs one (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=300 * 1024 * 1024,
            runtime_env={"env_vars": configure_environment()},
            _temp_dir=os.environ["RAY_TMPDIR"],
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def fixtures_dir() -> Path:
    return ROOT / "tests" / "fixtures"


# ------------------------------------------------------------------------------ a served job
# A finished job's artifact folder, made in seconds without Ray: the real ingest and memory functions
# on the e2e fixture, made-up profiles, and two LoRA adapters with random (non-zero) weights saved in PEFT's
# format, as the train stage saves them (what training would have learned is not what is tested here).
SERVED_FIXTURE = ROOT / "tests" / "fixtures" / "e2e" / "users.jsonl"


def make_job_dir(root: Path, name: str = "served") -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from prime_ray.data.examples import build_examples
    from prime_ray.data.sources import load_source
    from prime_ray.data.store import write_examples, write_users
    from prime_ray.memory.build import build_memory
    from prime_ray.memory.retrieval import Retriever
    from prime_ray.memory.store import write_memory
    from prime_ray.models.loading import load_model
    from prime_ray.spec import parse_spec
    from prime_ray.training.artifacts import adapter_dir

    spec = parse_spec({
        "name": name, "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": str(SERVED_FIXTURE)}, "task": {"kind": "rating", "min": 1, "max": 5},
                 "split": {"held_out_users": 0.25}},
        "memory": {"top_k": 2}, "eval": {"max_new_tokens": 12}, "artifact_root": str(root),
    })
    job = root / name
    (job / "ingest").mkdir(parents=True)
    (job / "memory").mkdir()
    (job / "spec.json").write_text(json.dumps(spec.model_dump(mode="json", by_alias=True)))
    built = build_examples(load_source(spec.data.source, spec.data).users, spec.data, spec.seed)
    write_users(job / "ingest" / "users.parquet", built.users, built.roles)
    write_examples(job / "ingest" / "examples.parquet", built.examples)
    users = {u.user_id: u for u in built.users}
    profiles = {u: f"{u} likes thrillers and dislikes musicals." for u in users}
    entries = list(build_memory(built.examples, users, Retriever("bm25"), 2, profiles))
    write_memory(job / "memory" / "memory.parquet", entries, "bm25")
    for seed, student in enumerate(("prime", "fast")):
        model, _ = load_model(spec.model)
        torch.manual_seed(seed)
        config = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False,
                            task_type="CAUSAL_LM")
        get_peft_model(model, config).save_pretrained(adapter_dir(job / "train", student))
    return job


@pytest.fixture(scope="module")  # appended history changes it: one per test module
def served_job(tmp_path_factory) -> Path:
    return make_job_dir(tmp_path_factory.mktemp("served-job"))
