"""Per-user work against the generalist on Serve, through Ray Data: the memory, traces and eval stages.

    with GeneralistMap(spec, app_name=app_name(spec.name, "traces")) as g:   # Serve app up ... deleted
        result = g.map_users(rows, TraceSynthesizer, SynthesisConfig(...),
                             parts_dir=out_dir / "parts", on_user_done=callback)
    result.rows, result.failures, result.resumed

- **The worker contract** (`UserWorker`): a class with `config_type` (a pydantic model: the one way
  configuration reaches workers, pickled as it is), `required_keys` (keys every input row must have
  besides `user_id`), a constructor `(generalist, config)` and `__call__(rows) -> rows`. A call gets the
  rows of *several* users, each user's rows together, and returns result rows that each carry the
  `user_id` of the user they belong to. `check_worker` verifies the class, the config and every row
  before anything starts, and each call's output is checked too; breaches raise `WorkerContractError`.
- **A full batch**: Ray Data runs `generalist.max_concurrency` workers (0.1 CPU each: they only wait on
  the replicas). Users are packed whole into calls of about `rows_per_call` rows, so a worker issues each
  step of its work (a synthesis step, an eval mode) for all its users at once: with the defaults one
  worker's step alone fills an engine batch, and the other worker's step waits in the replica's queue
  (joined with any of its kind), so the replica never waits on a worker. A worker whose rows go out
  in several engine batches (the eval's direct and think rows, per model) says so with an optional
  `batch_key(row)`: the calls are then sized so that the largest group of equal keys holds about
  `rows_per_call` rows.
- **Nothing lost**: each finished user's rows are written at once to `parts_dir/<user>.jsonl`
  (atomically); a re-run reads the parts and sends only the other users, so a crash redoes only the
  users that were in flight. A call that raises is retried user by user: a user that still fails is
  recorded in `result.failures` (and `parts_dir/failures.jsonl`) and the others go on.
- **Teardown**: the Serve app is deleted and the Data execution stopped on any exit of the `with`
  block or of `map_users`, KeyboardInterrupt included. The deletion is not waited for (its replicas
  go within a second; what needs their CPUs waits in Ray's scheduler), and Serve keeps running for
  the next stage: `end_serve` deletes what is left and shuts Serve down (the runner, as a job ends).
  With `keep=True` a block that ends cleanly leaves its app running for the next `GeneralistMap` of
  the same deployment (the memory stage's for the traces stage's: a deployment saved, 6 s on 2 CPU
  cores); `release_kept_apps` deletes what no one took over (the runner calls it before a stage that
  deploys no generalist).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import ray
from pydantic import BaseModel

from prime_ray.distributed.serve import GeneralistHandle, start_generalist, stop_generalist, stop_serve_when_idle
from prime_ray.files import atomic_write
from prime_ray.spec import JobSpec, config_hash

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.jsonl"

# on_user_done(user_id, result_rows, users_done, users_total)
UserCallback = Callable[[str, list[dict], int, int], None]


class WorkerContractError(TypeError):
    """A worker class, its config or its rows do not follow the `UserWorker` contract."""


class UserWorker(Protocol):
    """What `GeneralistMap.map_users` runs on each Ray Data worker.

    - `config_type`: the pydantic model of the worker's configuration.
    - `required_keys`: keys every input row has besides `user_id` (checked before the run).
    - `__init__(generalist, config)`: `generalist` has `generate(prompts, SamplingParams) ->
      list[Generation]` and `score(prompts, continuations) -> list[float]` (the Serve app's handle, or
      an engine in tests); the Serve handle also has `generate_groups([(prompts, params), ...])`, which
      sends several such calls at once; `config` is an instance of `config_type`.
    - `__call__(rows)`: rows of one or more users (JSON-able dicts, each user's rows together) ->
      result rows (JSON-able dicts), each with the `user_id` of its user. Raising fails every user of
      the call; they are then retried one by one.
    - optionally `batch_key(row) -> Hashable` (a staticmethod): rows of equal keys go to the generalist
      in one batch (see the module docstring); without it, all rows of a call form one group.
    """

    config_type: ClassVar[type[BaseModel]]
    required_keys: ClassVar[tuple[str, ...]]

    def __init__(self, generalist: Any, config: Any) -> None: ...

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def check_worker(worker_cls: Any, config: Any, rows: Sequence[Any] = ()) -> None:
    """Raise `WorkerContractError` naming what `worker_cls`, `config` or a row lacks."""
    name = getattr(worker_cls, "__qualname__", repr(worker_cls))
    # `callable(cls)` is true of every class: look for __call__ defined on the class or a base.
    if not isinstance(worker_cls, type) or not any("__call__" in vars(k) for k in worker_cls.__mro__[:-1]):
        raise WorkerContractError(f"{name}: a worker must be a class with __call__(rows) -> rows")
    config_type = getattr(worker_cls, "config_type", None)
    if not (isinstance(config_type, type) and issubclass(config_type, BaseModel)):
        raise WorkerContractError(f"{name}.config_type must be a pydantic model class, got {config_type!r}")
    if not isinstance(config, config_type):
        raise WorkerContractError(f"{name} takes a {config_type.__name__} config, got {type(config).__name__}")
    keys = getattr(worker_cls, "required_keys", None)
    if not (isinstance(keys, tuple) and all(isinstance(k, str) for k in keys)):
        raise WorkerContractError(f"{name}.required_keys must be a tuple of row keys, got {keys!r}")
    try:
        inspect.signature(worker_cls).bind(None, config)
    except TypeError as e:
        raise WorkerContractError(f"{name}(generalist, config) cannot be called: {e}") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise WorkerContractError(f"{name}: row {i} is a {type(row).__name__}, not a dict")
        missing = [k for k in ("user_id", *keys) if k not in row]
        if missing:
            raise WorkerContractError(
                f"{name}: row {i} (user {row.get('user_id')!r}) lacks {', '.join(map(repr, missing))}; "
                f"every row needs 'user_id' and {', '.join(map(repr, keys)) or 'nothing else'}"
            )


# ------------------------------------------------------------------------------------ part files


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


def _group_by_user(rows: Sequence[dict]) -> dict[str, list[dict]]:
    users: dict[str, list[dict]] = {}
    for row in rows:
        users.setdefault(str(row["user_id"]), []).append(row)
    return users


# --------------------------------------------------------------------------------- Data workers


class _UserBatchWorker:
    """The callable class of `map_batches`: a batch of users in, each user's result rows (or error) out."""

    def __init__(self, worker_cls: type, config: BaseModel, app_name: str):
        self.worker_cls = worker_cls
        self.worker = worker_cls(GeneralistHandle.connect(app_name), config)

    def _run(self, users: list[str], rows: list[dict]) -> dict[str, list[dict]]:
        out = self.worker(rows)
        results: dict[str, list[dict]] = {u: [] for u in users}
        for i, row in enumerate(out):
            user = str(row.get("user_id")) if isinstance(row, dict) else None
            if user not in results:
                raise WorkerContractError(
                    f"{self.worker_cls.__qualname__} returned row {i} with user_id {user!r}, not one of the "
                    f"users it was given ({', '.join(users[:5])}{', ...' if len(users) > 5 else ''})"
                )
            results[user].append(row)
        return results

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        users = [str(u) for u in batch["user_id"]]
        rows = {u: json.loads(blob) for u, blob in zip(users, batch["rows"])}
        try:
            results = self._run(users, [r for u in users for r in rows[u]])
            errors = {u: "" for u in users}
        except WorkerContractError:
            raise  # a bug in the worker, not in a user's data: stop the run
        except Exception:  # noqa: BLE001 - retried user by user below, so one bad user fails alone
            logger.warning("a call for %d users failed; retrying them one by one", len(users), exc_info=True)
            results, errors = {}, {}
            for u in users:
                try:
                    results[u], errors[u] = self._run([u], rows[u])[u], ""
                except WorkerContractError:
                    raise
                except Exception as e:  # noqa: BLE001 - recorded as the user's failure
                    results[u], errors[u] = [], f"{type(e).__name__}: {e}"
        return {"user_id": users, "rows": [json.dumps(results[u]) for u in users], "error": [errors[u] for u in users]}


# -------------------------------------------------------------------------------------- the map


@dataclass
class UserMapResult:
    rows: list[dict]  # every finished user's result rows, users in the order they first appear
    failures: dict[str, str] = field(default_factory=dict)  # user_id -> error, users that failed alone
    resumed: int = 0  # users read back from parts written by an earlier run
    prefix_cache: dict[str, int] | None = None  # a replica's prefix-cache counters after the map (None: none)

    def prefix_cache_line(self) -> str | None:
        """The replica's prefix cache in words, for the stage's progress events (None without one)."""
        stats = self.prefix_cache
        if not stats or not stats["queried_tokens"]:
            return None
        return (f"prefix cache: {stats['hit_tokens']:,} of {stats['queried_tokens']:,} prompt tokens found "
                f"({100 * stats['hit_tokens'] / stats['queried_tokens']:.0f} %), {stats['bytes'] / 2**20:.0f} MiB held")


def users_per_call(rows_per_user: float, rows_per_call: int) -> int:
    """Whole users per worker call so that a call holds about `rows_per_call` rows (at least one user)."""
    return max(1, math.floor(rows_per_call / max(rows_per_user, 1.0)))


def batch_rows_per_user(users: Mapping[str, Sequence[dict]], batch_key: Callable[[dict], Hashable] | None) -> float:
    """Rows per user of the largest group of equal `batch_key` (all rows when there is no key)."""
    keys = Counter(batch_key(row) if batch_key else None for rows in users.values() for row in rows)
    return max(keys.values(), default=0) / max(len(users), 1)


# Apps left running by a `GeneralistMap(keep=True)` block, by deployment key, for the next block of the
# same deployment to take over. The driver's: stages run one after the other in one process.
_kept: dict[str, GeneralistHandle] = {}


def release_kept_apps() -> None:
    """Delete the apps kept for a next `GeneralistMap` (their replicas hold CPUs or GPUs)."""
    if not ray.is_initialized():  # Ray is gone and the apps with it (Serve's calls would start a new Ray)
        _kept.clear()
    while _kept:
        _, handle = _kept.popitem()
        stop_generalist(handle.app_name, wait=False)


def end_serve() -> None:
    """Delete the kept apps, wait for the deleted apps to go, and shut Serve down if no app is left."""
    release_kept_apps()
    if ray.is_initialized():
        stop_serve_when_idle()


class GeneralistMap:
    """The generalist on Serve (with `adapter_path` merged, and named `adapters` a request chooses:
    `generate(prompts, params, adapter=name)`), and Ray Data workers driving it.

    A context manager: entering deploys the Serve app `app_name` (see `start_generalist`) or takes over
    a kept app of the same deployment (then `app_name` is that app's), leaving deletes it, however the
    block is left — unless `keep` is set and the block ended without an error: the app then stays
    running for the next `GeneralistMap` of the same deployment, until `release_kept_apps`.
    """

    def __init__(self, spec: JobSpec, *, app_name: str, adapter_path: str | None = None,
                 adapters: dict[str, str] | None = None, keep: bool = False):
        self.spec, self.app_name, self.adapter_path, self.adapters = spec, app_name, adapter_path, adapters
        self.keep = keep
        self.handle: GeneralistHandle | None = None
        # Everything the deployment is built from: only an identical app is taken over.
        self.deployment_key = config_hash({
            "model": spec.model.model_dump(mode="json"), "generalist": spec.generalist.model_dump(mode="json"),
            "resources": spec.resources.model_dump(mode="json"), "adapter_path": adapter_path, "adapters": adapters,
        })

    def __enter__(self) -> GeneralistMap:
        kept = _kept.pop(self.deployment_key, None)
        if kept is not None:
            logger.info("taking over the running Serve app %r", kept.app_name)
            self.handle, self.app_name = kept, kept.app_name
            return self
        release_kept_apps()  # another deployment's: its CPUs are this one's
        try:
            self.handle = start_generalist(self.spec, app_name=self.app_name, adapter_path=self.adapter_path,
                                           adapters=self.adapters)
        except BaseException:
            stop_generalist(self.app_name, wait=False)  # a half-deployed app must not keep its CPUs
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        handle, self.handle = self.handle, None
        if self.keep and exc_type is None and handle is not None:
            _kept[self.deployment_key] = handle
        else:
            stop_generalist(self.app_name, wait=False)

    def map_users(
        self,
        rows: Sequence[dict],
        worker_cls: type,
        config: BaseModel,
        *,
        parts_dir: Path | None = None,
        on_user_done: UserCallback | None = None,
    ) -> UserMapResult:
        """Run `worker_cls` over the users of `rows` on Ray Data workers calling this app.

        With `parts_dir`, finished users are persisted as they come and read back (not redone) on a
        re-run. Raises `WorkerContractError` before starting if the worker, config or rows break the
        contract.
        """
        if self.handle is None:
            raise RuntimeError("GeneralistMap.map_users runs inside `with GeneralistMap(...)`")
        check_worker(worker_cls, config, rows)
        users = _group_by_user(rows)
        result = UserMapResult(rows=[])
        done: dict[str, list[dict]] = {}
        if parts_dir is not None:
            parts_dir.mkdir(parents=True, exist_ok=True)
            (parts_dir / FAILURES_FILE).unlink(missing_ok=True)  # failed users are retried
            for user_id in users:
                path = part_path(parts_dir, user_id)
                if path.exists():
                    done[user_id] = read_part(path)
        result.resumed = len(done)
        todo = [u for u in users if u not in done]
        if todo:
            self._run(users, todo, worker_cls, config, parts_dir, done, result.failures, on_user_done)
            result.prefix_cache = self.handle.prefix_cache_stats()
        result.rows = [row for u in users if u in done for row in done[u]]
        return result

    def _run(self, users, todo, worker_cls, config, parts_dir, done, failures, on_user_done) -> None:
        g = self.spec.generalist
        rows_per_user = batch_rows_per_user({u: users[u] for u in todo}, getattr(worker_cls, "batch_key", None))
        per_call = users_per_call(rows_per_user, g.resolved_rows_per_call)
        per_call = math.ceil(len(todo) / math.ceil(len(todo) / per_call))  # calls of equal size, not a small last one
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        dataset = ray.data.from_items(
            [{"user_id": u, "rows": json.dumps(users[u])} for u in todo],
            # one block per worker call: a call's users arrive together, and finish together
            override_num_blocks=math.ceil(len(todo) / per_call),
        )
        workers = max(1, min(g.max_concurrency, math.ceil(len(todo) / per_call)))
        mapped = dataset.map_batches(
            _UserBatchWorker,
            fn_constructor_kwargs={"worker_cls": worker_cls, "config": config, "app_name": self.app_name},
            # a block is one call: a batch size would make Ray Data bundle blocks up to it, and it then
            # put every block into one task, whose calls ran one after the other on one worker
            batch_size=None,
            batch_format="numpy",
            # one call per worker at a time: with Ray Data's default of 4, calls queued on the first
            # actor to start, and a worker that started later sat idle while they ran one by one
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=0.1,  # the workers only wait on the replicas: the CPUs are the model's
        )
        records = iter(mapped.iter_rows())  # streams: each call's users as soon as a worker finishes them
        try:
            for record in records:
                user_id = str(record["user_id"])
                if record["error"]:
                    failures[user_id] = str(record["error"])
                    if parts_dir is not None:
                        with (parts_dir / FAILURES_FILE).open("a") as f:
                            f.write(json.dumps({"user_id": user_id, "error": failures[user_id]}) + "\n")
                    logger.warning("user %s failed: %s", user_id, failures[user_id])
                    continue
                rows_out = json.loads(record["rows"])
                if parts_dir is not None:
                    write_part(parts_dir, user_id, rows_out)
                done[user_id] = rows_out
                if on_user_done is not None:
                    on_user_done(user_id, rows_out, len(done), len(users))
        finally:
            # Leaving early (an error, Ctrl-C): stop the streaming execution and its actors now.
            close = getattr(records, "close", None)
            if close is not None:
                close()


class UsersFailed(RuntimeError):
    """Some users failed alone (the others are done and persisted); a re-run retries only them."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        shown = "; ".join(f"{u}: {e}" for u, e in list(failures.items())[:5])
        super().__init__(f"{len(failures)} user(s) failed ({shown}{'; ...' if len(failures) > 5 else ''})")
