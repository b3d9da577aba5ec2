"""The `traces` stage: Ray Data over the training users drives the generalist on Serve.

Reads ingest's training examples and their memory; writes `traces.parquet` and puts the statistics
(examples, traces, survivors after each filter, tokens, tokens/s) in the manifest. Each finished user
is persisted under `parts/` at once: a re-run after a crash redoes only the users without a part.
"""

from __future__ import annotations

import time

from prime_ray.pipeline.stage import Stage, StageContext, StageResult, register_stage
from prime_ray.spec import JobSpec


@register_stage
class TracesStage(Stage):
    name = "traces"
    requires = ("ingest", "memory")
    needs_ray = True
    outputs = ("traces.parquet",)

    def config(self, spec: JobSpec):
        dump = spec.model_dump(mode="json", by_alias=True)
        return {
            "model": dump["model"],
            "traces": dump["traces"],
            "generalist": dump["generalist"],
            "task": dump["data"]["task"],
            "prompts": dump["data"]["prompts"],
            "seed": spec.seed,
        }

    def run(self, ctx: StageContext) -> StageResult:
        from prime_ray.data.store import read_examples
        from prime_ray.distributed.batch import map_user_shards
        from prime_ray.distributed.serve import app_name, generalist
        from prime_ray.memory.store import MEMORY_FILE, read_memory
        from prime_ray.spec import config_hash
        from prime_ray.traces.stats import trace_stats
        from prime_ray.traces.store import TRACES_FILE, write_traces
        from prime_ray.traces.synthesis import TraceSynthesizer

        spec = ctx.spec
        examples = read_examples(ctx.inputs["ingest"] / "examples.parquet", split="train")
        memory = read_memory(ctx.inputs["memory"] / MEMORY_FILE)
        rows = []
        for ex in examples:
            if ex.example_id not in memory:
                raise KeyError(f"example {ex.example_id} has no row in {ctx.inputs['memory'] / MEMORY_FILE}")
            mem = memory[ex.example_id]
            rows.append({
                "user_id": ex.user_id,
                "example": ex.model_dump(mode="json"),
                "memory": {"profile": mem.profile, "episodes": [e.model_dump(mode="json") for e in mem.episodes]},
            })

        fresh = {"users": 0, "rows": 0, "kept": 0, "tokens": 0}

        def shard_done(user_id: str, result: list[dict], done: int, total: int) -> None:
            fresh["users"] += 1
            fresh["rows"] += len(result)
            fresh["kept"] += sum(r["kept"] for r in result)
            fresh["tokens"] += sum(r["generated_tokens"] for r in result)
            ctx.progress.update(done, total, rows=fresh["rows"], kept=fresh["kept"])

        started = time.perf_counter()
        with generalist(spec, app_name=app_name(spec.name, "traces")) as g:
            out = map_user_shards(
                rows,
                TraceSynthesizer,
                {"spec_json": spec.model_dump_json(by_alias=True), "config_hash": config_hash(self.config(spec))},
                concurrency=spec.generalist.max_concurrency,
                app_name=g.app_name,
                parts_dir=ctx.out_dir / "parts",
                on_shard_done=shard_done,
            )
        seconds = time.perf_counter() - started
        write_traces(ctx.out_dir / TRACES_FILE, out)

        counts, metrics = trace_stats(out, spec.data.task, spec.traces.filters)
        counts["users_resumed"] = counts["users"] - fresh["users"]
        counts["rows_generated_this_run"] = fresh["rows"]
        metrics["tokens_per_s"] = round(fresh["tokens"] / seconds, 2) if seconds > 0 and fresh["tokens"] else 0.0
        metrics["seconds_generating"] = round(seconds, 2)
        return StageResult(counts=counts, metrics=metrics)
