"""Generation throughput: the Serve deployment with dynamic batching vs one prompt at a time vs the
engine called directly in-process on the whole batch. Same engine, prompts and params in all three.

    .venv/bin/python benchmarks/generation.py                      # SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/generation.py --model tiny-test    # quick run

- serve batched: one request per prompt, all sent at once through the deployment handle (many callers);
  the replica's GroupQueue joins them into engine batches;
- serve single:  the same deployment, one request at a time (every engine batch holds one prompt);
- direct:        `engine.generate(prompts)` in this process, no Ray (the ceiling for the deployment).

The replica gets every CPU of the local Ray and the direct engine the same torch thread count, so
the serve/direct ratio measures what Serve costs, not a difference in threads. The three alternate
over `--rounds` rounds and each figure is its best round, so the load of a shared machine does not
favour one of them. The last line is `RATIO batched_vs_single=<x> serve_vs_direct=<y>`.
"""

from __future__ import annotations

import argparse
import os
import time

from prime_ray.data.schema import Item
from prime_ray.engine.base import Generation, SamplingParams, create_engine
from prime_ray.models.loading import load_tokenizer
from prime_ray.models.prompts import render_prompt
from prime_ray.paths import configure_environment
from prime_ray.spec import PromptMode, PromptTemplates, RatingTask, parse_spec

MODELS = {"smollm2": "smollm2-135m-instruct", "tiny-test": "tiny-test"}
MOVIES = [
    "Toy Story (1995) | Animation|Children's|Comedy", "GoldenEye (1995) | Action|Adventure|Thriller",
    "Heat (1995) | Action|Crime|Thriller", "Babe (1995) | Children's|Comedy|Drama",
    "Casablanca (1942) | Drama|Romance|War", "Alien (1979) | Action|Horror|Sci-Fi",
    "Fargo (1996) | Crime|Drama|Thriller", "Clueless (1995) | Comedy|Romance",
]


def prompts_for(tokenizer, count: int) -> list[str]:
    """Personal-think prompts as the traces stage renders them, one query movie each."""
    episodes = [Item(id=f"h{i}", input=m, output=str(1 + i % 5)) for i, m in enumerate(MOVIES[:4])]
    return [
        render_prompt(
            tokenizer, PromptMode.personal_think, task=RatingTask(), templates=PromptTemplates(),
            query_input=f"{MOVIES[4 + i % 4]} (viewing {i})", profile="Enjoys action films and thrillers.",
            episodes=episodes,
        )
        for i in range(count)
    ]


def throughput(generations: list[Generation], seconds: float) -> float:
    return sum(g.completion_tokens for g in generations) / seconds


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny-test, or any model name/path")
    parser.add_argument("--requests", type=int, default=16, help="prompts in the batched runs")
    parser.add_argument("--single-requests", type=int, default=4, help="prompts sent one at a time")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="engine max batch size (generalist.max_batch_size)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each figure is its best")
    args = parser.parse_args()

    configure_environment()
    import ray
    import torch

    from prime_ray.distributed.serve import generalist

    spec = parse_spec({
        "name": "bench",
        "model": {"name_or_path": MODELS.get(args.model, args.model)},
        "data": {"source": {"format": "jsonl", "path": "unused"}, "task": {"kind": "rating"}},
        "generalist": {"max_batch_size": args.batch_size, "batch_wait_timeout_s": 0.05,
                       "num_cpus_per_replica": args.cpus},
    })
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    prompts = prompts_for(load_tokenizer(spec.model), args.requests)
    single = prompts[: args.single_requests]
    torch.set_num_threads(args.cpus)
    print(f"model {spec.model.name_or_path}: {args.requests} prompts, {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}, {args.cpus} CPUs / torch threads")

    engine = create_engine(spec.model, device="cpu", max_batch_size=args.batch_size)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[float]] = {"direct": [], "batched": [], "single": []}
    try:
        with generalist(spec, app_name="bench-generalist") as g:
            measures = {
                "direct": lambda: engine.generate(prompts, params),
                "batched": lambda: [gen for [gen] in g.generate_groups([([p], params, None) for p in prompts])],
                "single": lambda: [g.generate([p], params)[0] for p in single],
            }
            engine.generate(prompts[: args.batch_size], params)  # warm-up at full batch shape
            g.generate(prompts[: args.batch_size], params)
            # Rounds alternate the three, so a busy spell on a shared machine hits all of them alike;
            # each figure is its best round.
            for round_ in range(1, args.rounds + 1):
                for name, run in measures.items():
                    out, seconds = timed(run)
                    runs[name].append(throughput(out, seconds))
                print(f"round {round_}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()) + "  tok/s")
            sizes = g.served_batch_sizes()
    finally:
        ray.shutdown()
        engine.close()

    direct, batched, one = (max(runs[k]) for k in ("direct", "batched", "single"))
    print(f"direct in-process batched : {direct:8.1f} tok/s")
    print(f"serve, concurrent requests: {batched:8.1f} tok/s")
    print(f"serve, one at a time      : {one:8.1f} tok/s  ({len(single)} prompts)")
    print(f"engine batch sizes served : max {max(sizes)}")
    print(f"batched / single = {batched / one:.2f}  (target >= 3)")
    print(f"serve / direct   = {batched / direct:.2f}  (target >= 0.8)")
    print(f"RATIO batched_vs_single={batched / one:.2f} serve_vs_direct={batched / direct:.2f}")


if __name__ == "__main__":
    main()
