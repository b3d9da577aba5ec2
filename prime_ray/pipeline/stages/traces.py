"""The `traces` stage: Ray Data over the training users drives the generalist on Serve.

Reads ingest's training examples and their memory; writes `traces.parquet` and puts the statistics
(examples, traces, survivors after each filter, tokens, tokens/s) in the manifest. The generalist on
Serve and the Ray Data workers running `TraceSynthesizer` come from `GeneralistMap`: finished users are
persisted under `parts/` (a re-run redoes only the others), a user that fails alone is named in the
manifest (`failed_users`) and has no traces.
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
    deploys_generalist = True
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
        from prime_ray.distributed.batch import GeneralistMap
        from prime_ray.distributed.serve import app_name
        from prime_ray.models.loading import load_tokenizer
        from prime_ray.spec import config_hash
        from prime_ray.traces.stats import trace_stats
        from prime_ray.traces.store import TRACES_FILE, write_traces
        from prime_ray.traces.synthesis import SynthesisConfig, TraceSynthesizer, synthesis_rows

        spec = ctx.spec
        rows = synthesis_rows(ctx.inputs["ingest"], ctx.inputs["memory"], spec, load_tokenizer(spec.model))
        fresh = {"users": 0, "rows": 0, "kept": 0, "tokens": 0}

        def user_done(user_id: str, result: list[dict], done: int, total: int) -> None:
            fresh["users"] += 1
            fresh["rows"] += len(result)
            fresh["kept"] += sum(r["kept"] for r in result)
            fresh["tokens"] += sum(r["generated_tokens"] for r in result)
            ctx.progress.update(done, total, rows=fresh["rows"], kept=fresh["kept"])

        started = time.perf_counter()
        with GeneralistMap(spec, app_name=app_name(spec.name, "traces")) as g:
            result = g.map_users(rows, TraceSynthesizer, SynthesisConfig(spec=spec, config_hash=config_hash(self.config(spec))),
                                 parts_dir=ctx.out_dir / "parts", on_user_done=user_done)
        seconds = time.perf_counter() - started
        for user_id, error in result.failures.items():
            ctx.progress.info(f"user {user_id} failed, no traces: {error}")
        if line := result.prefix_cache_line():
            ctx.progress.info(line)
        write_traces(ctx.out_dir / TRACES_FILE, result.rows)

        counts, metrics = trace_stats(result.rows, spec.data.task, spec.traces.filters)
        counts["users_resumed"] = result.resumed
        counts["users_failed"] = len(result.failures)
        counts["rows_generated_this_run"] = fresh["rows"]
        metrics["tokens_per_s"] = round(fresh["tokens"] / seconds, 2) if seconds > 0 and fresh["tokens"] else 0.0
        metrics["seconds_generating"] = round(seconds, 2)
        metrics["failed_users"] = result.failures
        return StageResult(counts=counts, metrics=metrics)
