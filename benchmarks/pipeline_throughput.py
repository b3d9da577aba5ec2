"""The traces stage's real flow against the engine at full batch, on the same rationalization prompts.

    .venv/bin/python benchmarks/pipeline_throughput.py                   # SmolLM2, the demo's task
    .venv/bin/python benchmarks/pipeline_throughput.py --model tiny-test --users 6 --rounds 1   # quick

Setup: the demo's spec (examples/movielens-rating.yaml: MovieLens-100K rating, SmolLM2-135M-Instruct)
with `--users` users, through the real `ingest` and `memory` stages on an embedded Ray. Then, in
alternating rounds:

- **stage**: what the traces stage runs: `GeneralistMap` (the generalist on Serve, Ray Data workers)
  with `TraceSynthesizer` over every training user, from scratch (direct answers, rationalizations,
  hint-free answers, likelihood gains). Tokens/s = every generated token / wall time of the map,
  Data workers' start-up included.
- **engine**: `HFEngine.generate` in this process on the same rationalization prompts (hint, memory,
  think-block opening) with the same params, `--batch-size` prompts per engine batch, the torch
  thread count the replica gets. Only the rationalizations: the stage's other steps are its overhead.
- **synthesizer**: `TraceSynthesizer` in this process, no Ray, on an engine set as the replica's (the
  spec's prefix cache): the stage's work without its flow, so stage / synthesizer is what Serve and Ray
  Data cost (worker start-up included).

The replica's and the synthesizer's prefix caches are emptied before each round, so no round finds
the prompts of the one before.

Each figure is its best round (the machine is shared: alternating rounds meet the same load). The
last line is `RATIO stage_vs_engine=<x> stage_vs_synthesizer=<y>`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from prime_ray.engine.base import SamplingParams, create_engine
from prime_ray.paths import configure_environment
from prime_ray.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"smollm2": "smollm2-135m-instruct", "tiny-test": "tiny-test"}


def _spec(args, artifact_root: str):
    base = load_spec(ROOT / "examples" / "movielens-rating.yaml").model_dump(mode="json", by_alias=True)
    base["model"]["name_or_path"] = MODELS.get(args.model, args.model)
    base["data"]["max_users"] = args.users
    base["generalist"].update(max_batch_size=args.batch_size)
    base.update(name="pipeline-throughput", artifact_root=artifact_root, stages=["memory"],
                resources={"num_cpus": args.cpus})
    return parse_spec(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny-test, or any model name/path")
    parser.add_argument("--users", type=int, default=22, help="users of the demo's data (a quarter held out)")
    parser.add_argument("--batch-size", type=int, default=32, help="engine max batch size (generalist.max_batch_size)")
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--examples-per-user", type=int, default=None,
                        help="at most this many of each user's training examples in the rounds (default: all)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each figure is its best")
    parser.add_argument("--artifact-root", help="keep ingest and memory here (reused by a later run); default: a temp dir")
    args = parser.parse_args()

    configure_environment()
    import ray
    import torch

    from prime_ray.distributed.batch import GeneralistMap
    from prime_ray.distributed.cluster import ensure_ray
    from prime_ray.distributed.serve import replica_threads
    from prime_ray.pipeline.runner import run_job
    from prime_ray.traces.synthesis import SynthesisConfig, TraceSynthesizer, synthesis_rows

    with tempfile.TemporaryDirectory(prefix="pipeline-throughput-") as tmp:
        tmp = args.artifact_root or tmp
        spec = _spec(args, tmp)
        ensure_ray(spec.resources)  # an embedded Ray with --cpus CPUs, as a job gets
        try:
            run_job(spec)  # ingest + memory: the stage's real inputs
            job = Path(tmp) / spec.name
            rows, per_user = [], {}
            engine = create_engine(spec.model, device="cpu", max_batch_size=args.batch_size)
            for row in synthesis_rows(job / "ingest", job / "memory", spec, engine.tokenizer):
                per_user[row["user_id"]] = per_user.get(row["user_id"], 0) + 1
                if args.examples_per_user is None or per_user[row["user_id"]] <= args.examples_per_user:
                    rows.append(row)
            users = len({r["user_id"] for r in rows})
            config = SynthesisConfig(spec=spec, config_hash="benchmark")

            # the engine's prompts: exactly the rationalization prompts the synthesizer sends
            opening = TraceSynthesizer(None, config)._opening()
            prompts = [r["prompts"]["hinted"] + opening for r in rows]
            t = spec.traces
            params = SamplingParams(max_new_tokens=t.max_new_tokens, temperature=t.temperature, top_p=t.top_p,
                                    seed=spec.seed)
            threads = replica_threads(spec)
            torch.set_num_threads(threads)
            mean_prompt = sum(len(engine.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            print(f"model {spec.model.name_or_path}: {users} users, {len(rows)} examples, "
                  f"{t.samples_per_example} trace(s) each, prompts of {mean_prompt / len(prompts):.0f} tokens, "
                  f"{t.max_new_tokens} new tokens, T {t.temperature}, batch {args.batch_size}, {threads} torch threads")
            engine.generate(prompts[:4], SamplingParams(max_new_tokens=4))  # warm-up: first-call allocations
            # the synthesizer's engine is the replica's: with the spec's prefix cache, emptied before each round
            synth_engine = create_engine(spec.model, device="cpu", max_batch_size=args.batch_size,
                                         prefix_cache_mib=spec.generalist.prefix_cache_mib)

            runs: dict[str, list[float]] = {"stage": [], "engine": [], "synthesizer": []}
            in_process = TraceSynthesizer(synth_engine, config)
            with GeneralistMap(spec, app_name="pipeline-throughput") as g:
                for round_ in range(1, args.rounds + 1):
                    g.handle.reset_prefix_cache()  # a round must not find the prompts of the one before
                    start = time.perf_counter()
                    out = g.map_users(rows, TraceSynthesizer, config).rows
                    seconds = time.perf_counter() - start
                    runs["stage"].append(sum(r["generated_tokens"] for r in out) / seconds)
                    load_stage = Path("/proc/loadavg").read_text().split()[0]

                    start = time.perf_counter()
                    gens = [gen for _ in range(t.samples_per_example) for gen in engine.generate(prompts, params)]
                    seconds = time.perf_counter() - start
                    runs["engine"].append(sum(x.completion_tokens for x in gens) / seconds)
                    load_engine = Path("/proc/loadavg").read_text().split()[0]

                    if synth_engine.prefix_cache is not None:
                        synth_engine.prefix_cache.clear()
                    start = time.perf_counter()
                    out = in_process(rows)
                    runs["synthesizer"].append(sum(r["generated_tokens"] for r in out) / (time.perf_counter() - start))
                    load_synth = Path("/proc/loadavg").read_text().split()[0]
                    print(f"round {round_}: stage {runs['stage'][-1]:.1f} tok/s (load {load_stage})  "
                          f"engine {runs['engine'][-1]:.1f} tok/s (load {load_engine})  "
                          f"synthesizer {runs['synthesizer'][-1]:.1f} tok/s (load {load_synth})", flush=True)
                sizes = g.handle.served_batch_sizes()
                cache = g.handle.prefix_cache_stats()
        finally:
            ray.shutdown()

    stage, engine_best, synth = max(runs["stage"]), max(runs["engine"]), max(runs["synthesizer"])
    print(f"stage (Serve + Data + synthesizer): {stage:8.1f} tok/s")
    print(f"engine in-process, full batch     : {engine_best:8.1f} tok/s (rationalizations only)")
    print(f"synthesizer in-process, no Ray    : {synth:8.1f} tok/s (the stage's work without its flow)")
    print(f"engine batch sizes served: max {max(sizes)}, mean {sum(sizes) / len(sizes):.1f}")
    if cache:
        print(f"the replica's prefix cache, all rounds: {cache['hit_tokens']} of {cache['queried_tokens']} prompt "
              f"tokens found, {cache['bytes'] / 2**20:.0f} MiB held at the end")
    print(f"/proc/loadavg at the end: {Path('/proc/loadavg').read_text().strip()}")
    print(f"RATIO stage_vs_engine={stage / engine_best:.2f} stage_vs_synthesizer={stage / synth:.2f}")


if __name__ == "__main__":
    main()
