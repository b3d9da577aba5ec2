"""Serving throughput and latency: the student app on Ray Serve vs the engine called in-process.

    .venv/bin/python benchmarks/serving.py                          # SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/serving.py --model tiny-test        # quick run
    .venv/bin/python benchmarks/serving.py --job artifacts/demo     # a trained job's own student

At 1, 8 and 32 concurrent clients (each sends its requests one after another, as a chat client would),
the same personal-think requests of the job's users, PRIME adapter, greedy decoding:

- served: through the Serve app's handle (memory recalled and prompt rendered per request in the
  replica, `@serve.batch` groups concurrent requests across users, adapter switching on one model);
- engine: the prompts the app renders, given to `engine.generate` in this process in batches of the
  client count (the ceiling: no queueing, no Ray, the batch is full from the start).

The replica and the in-process engine get the same torch thread count. Each figure is the best of
`--rounds` alternating rounds, so a shared machine's load favours neither. Printed: requests/s and
p50/p95 latency per side and client count; last, `RATIO served_vs_engine=<x>` (requests/s at 32 clients).
Without `--job`, a job folder is made with untrained adapters (prime_ray.serving.synthetic): the
timing is the same as a trained one's; the answers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prime_ray.paths import configure_environment

MODELS = {"smollm2": "smollm2-135m-instruct", "tiny-test": "tiny-test"}
USERS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "e2e" / "users.jsonl"
MOVIES = ["Toy Story (1995) | Animation|Children's|Comedy", "GoldenEye (1995) | Action|Adventure|Thriller",
          "Heat (1995) | Action|Crime|Thriller", "Babe (1995) | Children's|Comedy|Drama",
          "Casablanca (1942) | Drama|Romance|War", "Alien (1979) | Action|Horror|Sci-Fi"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def requests_for(users: list[str], count: int, max_new_tokens: int):
    from prime_ray.serving.schemas import PredictRequest

    return [PredictRequest(user_id=users[i % len(users)], input=f"{MOVIES[i % len(MOVIES)]} (viewing {i})",
                           max_new_tokens=max_new_tokens) for i in range(count)]


def run_served(handle, requests, clients: int) -> tuple[float, list[float]]:
    """(seconds, latencies): `clients` threads, each sending its share of the requests one at a time."""
    shares = [requests[c::clients] for c in range(clients)]

    def client(share):
        latencies = []
        for request in share:
            start = time.perf_counter()
            handle.predict([request])
            latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [x for part in pool.map(client, shares) for x in part]
    return time.perf_counter() - start, latencies


def run_engine(student, requests, clients: int) -> tuple[float, list[float]]:
    """(seconds, latencies): the rendered prompts in batches of `clients`, one engine call each."""
    prepared = [student.prepare(r) for r in requests]
    latencies = []
    start = time.perf_counter()
    for i in range(0, len(prepared), clients):
        batch = prepared[i:i + clients]
        t = time.perf_counter()
        student.generate(batch)
        latencies += [time.perf_counter() - t] * len(batch)
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--job", type=Path, help="A trained job's folder (default: one made with untrained adapters).")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    env = configure_environment()
    import ray
    import torch

    from prime_ray.distributed.student import student
    from prime_ray.serving.student import ServedStudent
    from prime_ray.serving.synthetic import make_job_dir

    torch.set_num_threads(args.threads)
    job = args.job or make_job_dir(tempfile.mkdtemp(prefix="serving-bench-"), USERS, model=MODELS[args.model],
                                   random_weights=False)
    ray.init(address="local", num_cpus=args.threads, include_dashboard=False, runtime_env={"env_vars": env},
             _temp_dir=env["RAY_TMPDIR"], log_to_driver=False)
    engine_side = ServedStudent.load(job)
    users = sorted(engine_side.memory.users)
    biggest = max(args.clients)
    print(f"model {engine_side.spec.model.name_or_path}, job {job}, {len(users)} users, {args.threads} threads, "
          f"{args.max_new_tokens} new tokens, load {os.getloadavg()[0]:.1f}")
    best: dict[tuple[str, int], tuple[float, list[float], int]] = {}
    with student(job, max_batch_size=biggest, batch_wait_timeout_s=0.05, num_cpus_per_replica=args.threads) as served:
        served.predict(requests_for(users, 2, 4))  # warm-up: first calls load lazily
        engine_side.predict(requests_for(users, 2, 4))
        for round_ in range(args.rounds):
            for clients in args.clients:
                requests = requests_for(users, clients * args.requests_per_client, args.max_new_tokens)
                for side, run in (("served", lambda requests=requests, clients=clients: run_served(served, requests, clients)),
                                  ("engine", lambda requests=requests, clients=clients: run_engine(engine_side, requests, clients))):
                    seconds, latencies = run()
                    if (side, clients) not in best or seconds < best[(side, clients)][0]:
                        best[(side, clients)] = (seconds, latencies, len(requests))
                    print(f"  round {round_ + 1} {side:<6} clients {clients:>2}: {len(requests) / seconds:6.2f} req/s "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
        sizes = served.served_batch_sizes()
    print(f"\n{'side':<7}{'clients':>8}{'req/s':>9}{'p50 s':>9}{'p95 s':>9}")
    for clients in args.clients:
        for side in ("served", "engine"):
            seconds, latencies, n = best[(side, clients)]
            print(f"{side:<7}{clients:>8}{n / seconds:>9.2f}{statistics.median(latencies):>9.2f}"
                  f"{percentile(latencies, 0.95):>9.2f}")
    print(f"served engine batches: max {max(sizes)}, mean {statistics.mean(sizes):.1f}")
    engine_side.close()
    ray.shutdown()
    served_rate = best[("served", biggest)][2] / best[("served", biggest)][0]
    engine_rate = best[("engine", biggest)][2] / best[("engine", biggest)][0]
    print(f"RATIO served_vs_engine={served_rate / engine_rate:.3f}")


if __name__ == "__main__":
    main()
