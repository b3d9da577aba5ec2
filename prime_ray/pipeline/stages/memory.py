"""The `memory` stage: profile summaries by the generalist on Serve, and episodic retrieval per example.

Reads ingest's users and examples; writes `memory.parquet` (one row per example of every split).
Profiles come from `ProfileWriter` workers through `GeneralistMap` (finished users kept in `parts/`),
their prompts rendered here. The Serve app is left running for the traces stage, which runs the same
deployment next (the runner deletes it before any stage that does not).
"""

from __future__ import annotations

import time

from prime_ray.pipeline.stage import Stage, StageContext, StageResult, register_stage
from prime_ray.spec import JobSpec


@register_stage
class MemoryStage(Stage):
    name = "memory"
    requires = ("ingest",)
    needs_ray = True
    deploys_generalist = True
    outputs = ("memory.parquet",)

    def config(self, spec: JobSpec):
        dump = spec.model_dump(mode="json", by_alias=True)
        return {
            "model": dump["model"],
            "memory": dump["memory"],
            "generalist": dump["generalist"],
            "prompts": dump["data"]["prompts"],  # the profile prompt's system line
            "seed": spec.seed,
        }

    def run(self, ctx: StageContext) -> StageResult:
        from prime_ray.data.store import read_examples, read_users
        from prime_ray.memory.build import build_memory
        from prime_ray.memory.retrieval import Retriever
        from prime_ray.memory.store import MEMORY_FILE, write_memory

        spec = ctx.spec
        users = read_users(ctx.inputs["ingest"] / "users.parquet")
        examples = read_examples(ctx.inputs["ingest"] / "examples.parquet")
        retriever = Retriever(spec.memory.retriever)  # fails early (e.g. the embed extra missing)

        profiles: dict[str, str] = {}
        metrics: dict = {}
        if spec.memory.profile:
            profiles, metrics = _write_profiles(ctx, list(users.values()))

        entries = list(build_memory(examples, users, retriever, spec.memory.top_k, profiles))
        write_memory(ctx.out_dir / MEMORY_FILE, entries, spec.memory.retriever)
        episodes = [len(memory.episodes) for _, memory in entries]
        counts = {
            "users": len(users),
            "examples": len(entries),
            "profiles": len(profiles),
            "episodes": sum(episodes),
        }
        metrics["mean_episodes"] = round(sum(episodes) / len(episodes), 3) if episodes else 0.0
        return StageResult(counts=counts, metrics=metrics)


def _write_profiles(ctx: StageContext, users: list) -> tuple[dict[str, str], dict]:
    """Profiles by the generalist on Serve, users spread over Ray Data workers (persisted in parts/)."""
    from prime_ray.distributed.batch import GeneralistMap, UsersFailed
    from prime_ray.distributed.serve import app_name
    from prime_ray.memory.profiles import ProfileConfig, ProfileWriter, profile_rows
    from prime_ray.models.loading import load_tokenizer

    spec = ctx.spec
    rows = profile_rows(load_tokenizer(spec.model), users, spec.data.prompts, spec.memory)
    config = ProfileConfig(memory=spec.memory, seed=spec.seed)
    started = time.perf_counter()
    # keep: the traces stage runs the same deployment next and takes the app over
    with GeneralistMap(spec, app_name=app_name(spec.name, "memory"), keep=True) as g:
        result = g.map_users(rows, ProfileWriter, config, parts_dir=ctx.out_dir / "parts",
                             on_user_done=lambda _u, _r, done, total: ctx.progress.update(done, total))
    seconds = time.perf_counter() - started
    if result.failures:
        raise UsersFailed(result.failures)  # a user without the profile the others have would skew eval
    profiles = {r["user_id"]: r["profile"] for r in result.rows}
    tokens = sum(r["completion_tokens"] for r in result.rows)
    words = [len(p.split()) for p in profiles.values()]
    return profiles, {
        "profile_tokens": tokens,
        "profile_tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else 0.0,
        "mean_profile_words": round(sum(words) / len(words), 2) if words else 0.0,
    }
