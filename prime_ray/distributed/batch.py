"""Ray Data over user shards: one record per user, a pool of workers that call the Serve deployment.

    map_user_shards(rows, fn_cls, fn_kwargs, concurrency=2, parts_dir=out_dir / "parts")

- The rows of one user stay together: the dataset has one record per user (its rows as JSON), so a
  worker always sees a user's examples at once and can send them to the deployment together.
- `map_batches` runs a callable class in `concurrency` actors with a small CPU share each, so they do
  not take the CPUs the model replicas need; each builds `fn_cls(generalist=<handle>, **fn_kwargs)`
  once and calls it with one user's rows at a time (`fn(rows) -> result rows`).
- Row-level resume: the driver streams results as users finish and writes each user's result rows to
  `parts_dir/<user>.jsonl` at once (atomically). A re-run after a crash reads the parts it finds and
  sends only the other users to the workers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import ray

from prime_ray.distributed.serve import GeneralistHandle
from prime_ray.files import atomic_write

# on_shard_done(user_id, result_rows, users_done, users_total)
ShardCallback = Callable[[str, list[dict], int, int], None]


class _ShardWorker:
    """The callable class of `map_batches`: one user's rows in, that user's result rows out."""

    def __init__(self, fn_cls: type, fn_kwargs: dict[str, Any], app_name: str):
        self.fn = fn_cls(generalist=GeneralistHandle.connect(app_name), **fn_kwargs)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        users, results = [], []
        for user_id, blob in zip(batch["user_id"], batch["rows"]):
            users.append(str(user_id))
            results.append(json.dumps(self.fn(json.loads(blob))))
        return {"user_id": users, "rows": results}


def part_path(parts_dir: Path, user_id: str) -> Path:
    """A user's part file; hashed names keep any user id a safe file name."""
    return parts_dir / f"{hashlib.sha1(user_id.encode()).hexdigest()[:16]}.jsonl"


def write_part(parts_dir: Path, user_id: str, rows: list[dict]) -> Path:
    """Write atomically: a crash mid-write leaves no part, so the user is simply redone."""
    path = part_path(parts_dir, user_id)
    atomic_write(path, "".join(json.dumps({"user_id": user_id, "row": row}) + "\n" for row in rows))
    return path


def read_part(path: Path) -> list[dict]:
    return [json.loads(line)["row"] for line in path.read_text().splitlines() if line]


def _group_by_user(rows: list[dict]) -> dict[str, list[dict]]:
    users: dict[str, list[dict]] = {}
    for i, row in enumerate(rows):
        if "user_id" not in row:
            raise KeyError(f"row {i} has no 'user_id'")
        users.setdefault(str(row["user_id"]), []).append(row)
    return users


def map_user_shards(
    rows: list[dict],
    fn_cls: type,
    fn_kwargs: dict[str, Any],
    concurrency: int,
    batch_size: int = 1,
    *,
    app_name: str = "generalist",
    parts_dir: Path | None = None,
    on_shard_done: ShardCallback | None = None,
    num_cpus: float = 0.1,
) -> list[dict]:
    """Run `fn_cls` over the users of `rows` (JSON-able dicts with a `user_id`) on Ray Data workers.

    `batch_size` is users per worker call. With `parts_dir`, finished users are persisted as they come
    and skipped on a re-run. Returns every user's result rows, in the order the users first appear.
    """
    users = _group_by_user(rows)
    results: dict[str, list[dict]] = {}
    if parts_dir is not None:
        parts_dir.mkdir(parents=True, exist_ok=True)
        for user_id in users:
            path = part_path(parts_dir, user_id)
            if path.exists():
                results[user_id] = read_part(path)
    todo = [u for u in users if u not in results]
    total = len(users)

    if todo:
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items(
            [{"user_id": u, "rows": json.dumps(users[u])} for u in todo],
            override_num_blocks=len(todo),  # one block per user: workers take users one by one
        )
        mapped = dataset.map_batches(
            _ShardWorker,
            fn_constructor_kwargs={"fn_cls": fn_cls, "fn_kwargs": fn_kwargs, "app_name": app_name},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(concurrency, len(todo)))),
            num_cpus=num_cpus,
        )
        for record in mapped.iter_rows():  # streams: each user as soon as a worker finishes it
            user_id = str(record["user_id"])
            result = json.loads(record["rows"])
            if parts_dir is not None:
                write_part(parts_dir, user_id, result)
            results[user_id] = result
            if on_shard_done is not None:
                on_shard_done(user_id, result, len(results), total)
    return [row for user_id in users for row in results[user_id]]
