"""The `ingest` stage: read and validate the data, split users and queries, write the examples.

Bad rows are reported (events, and every one in `problems.jsonl`) and skipped; the job goes on with
the good ones, and fails only when no valid user is left. Every source passes the leakage check
(data/leakage.py) on the way in: history items holding a query's input are removed, each one a
problem, and counted as `leaked_items_removed`.
"""

from __future__ import annotations

import json
from typing import Any

from prime_ray.data.examples import build_examples
from prime_ray.data.sources import describe_source, load_source, source_fingerprint
from prime_ray.data.store import write_examples, write_users
from prime_ray.pipeline.stage import Stage, StageContext, StageResult, register_stage
from prime_ray.spec import JobSpec

USERS_FILE = "users.parquet"
EXAMPLES_FILE = "examples.parquet"
PROBLEMS_FILE = "problems.jsonl"
PROBLEMS_SHOWN = 10  # problems sent as events; all of them are in problems.jsonl


@register_stage
class IngestStage(Stage):
    name = "ingest"
    needs_ray = False
    outputs = (USERS_FILE, EXAMPLES_FILE, PROBLEMS_FILE)

    def config(self, spec: JobSpec) -> Any:
        # The source's file digests too: edited data is a new input even under the same path.
        return {
            "data": spec.data.model_dump(mode="json"),
            "seed": spec.seed,
            "source_files": source_fingerprint(spec.data.source),
        }

    def run(self, ctx: StageContext) -> StageResult:
        spec, progress = ctx.spec, ctx.progress
        source = describe_source(spec.data.source)
        progress.info(f"reading {source}")
        loaded = load_source(spec.data.source, spec.data, seed=spec.seed)

        with (ctx.out_dir / PROBLEMS_FILE).open("w", encoding="utf-8") as f:
            for problem in loaded.problems:
                f.write(json.dumps(problem.to_dict(), ensure_ascii=False) + "\n")
        if loaded.problems:
            progress.info(
                f"{len(loaded.problems)} problem(s) in {source}; those rows are skipped "
                f"(all listed in {PROBLEMS_FILE})",
                problems=len(loaded.problems), valid_users=len(loaded.users),
            )
            for problem in loaded.problems[:PROBLEMS_SHOWN]:
                progress.info(str(problem))
        if loaded.leaks:
            progress.info(f"{loaded.leaks} history item(s) held a query's input and were removed from training "
                          f"(listed in {PROBLEMS_FILE})", leaked_items_removed=loaded.leaks)
        for note in loaded.notes:
            progress.info(note)
        if not loaded.users:
            first = f"; first: {loaded.problems[0]}" if loaded.problems else ""
            raise ValueError(f"no valid users in {source} ({len(loaded.problems)} problem(s){first})")

        built = build_examples(loaded.users, spec.data, spec.seed)
        write_users(ctx.out_dir / USERS_FILE, built.users, built.roles)
        write_examples(ctx.out_dir / EXAMPLES_FILE, built.examples)
        counts = {
            "users": len(built.users),
            "train_users": sum(role == "train" for role in built.roles.values()),
            "test_users": sum(role == "test_user" for role in built.roles.values()),
            "examples_train": built.count("train"),
            "examples_test_query": built.count("test_query"),
            "examples_test_user": built.count("test_user"),
            "problems": len(loaded.problems),
            "leaked_items_removed": loaded.leaks,
            "unlabelled_queries": built.unlabelled_queries,
        }
        for split in ("train", "test_query", "test_user"):
            if not built.count(split):
                progress.info(f"no {split} examples (users: {counts['users']}, held-out share: "
                              f"{spec.data.split.held_out_users}, queries per user: {spec.data.split.queries_per_user})")
        progress.update(len(built.examples), len(built.examples), **counts)
        return StageResult(counts=counts)
