"""A servable job folder made without running a job: for benchmarks and tests of serving alone.

The data and memory are built with the real ingest and memory functions from a native JSONL file; the
profiles are given; the adapters are fresh PEFT LoRA adapters (`random_weights`: non-zero, so each
changes the model's output; otherwise PEFT's initialization, which leaves it unchanged) saved where
the train stage saves them. Nothing here was learned: use it to measure or test serving, never to
judge answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from prime_ray.spec import parse_spec


def make_job_dir(root: str | Path, users_jsonl: str | Path, *, name: str = "served", model: str = "tiny-test",
                 random_weights: bool = True, max_new_tokens: int = 12, lora_r: int = 8) -> Path:
    """Write `root/name/` (spec.json, ingest/, memory/, train/{prime,fast}/adapter) and return it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from prime_ray.data.examples import build_examples
    from prime_ray.data.sources import load_source
    from prime_ray.data.store import write_examples, write_users
    from prime_ray.memory.build import build_memory
    from prime_ray.memory.retrieval import Retriever
    from prime_ray.memory.store import write_memory
    from prime_ray.models.loading import load_model
    from prime_ray.training.artifacts import STUDENTS, adapter_dir

    spec = parse_spec({
        "name": name, "model": {"name_or_path": model},
        "data": {"source": {"format": "jsonl", "path": str(users_jsonl)},
                 "task": {"kind": "rating", "min": 1, "max": 5}, "split": {"held_out_users": 0.25}},
        "memory": {"top_k": 2}, "eval": {"max_new_tokens": max_new_tokens}, "artifact_root": str(root),
    })
    job = Path(root) / name
    (job / "ingest").mkdir(parents=True)
    (job / "memory").mkdir()
    (job / "spec.json").write_text(json.dumps(spec.model_dump(mode="json", by_alias=True)))
    built = build_examples(load_source(spec.data.source, spec.data).users, spec.data, spec.seed)
    write_users(job / "ingest" / "users.parquet", built.users, built.roles)
    write_examples(job / "ingest" / "examples.parquet", built.examples)
    users = {u.user_id: u for u in built.users}
    profiles = {u: f"{u} likes thrillers and dislikes musicals." for u in users}
    entries = list(build_memory(built.examples, users, Retriever(spec.memory.retriever), spec.memory.top_k, profiles))
    write_memory(job / "memory" / "memory.parquet", entries, spec.memory.retriever)
    for seed, student in enumerate(STUDENTS):
        base, _ = load_model(spec.model)
        torch.manual_seed(seed)
        config = LoraConfig(r=lora_r, lora_alpha=8 * lora_r, target_modules="all-linear",
                            init_lora_weights=not random_weights, task_type="CAUSAL_LM")
        get_peft_model(base, config).save_pretrained(str(adapter_dir(job / "train", student)))
    return job
