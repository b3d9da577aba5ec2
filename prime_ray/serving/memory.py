"""The memory of a served job: each user's profile (semantic) and an episodic index over their history.

Built from the job's artifacts, with the retriever the job used (`spec.memory.retriever`, `top_k`):

    ingest/users.parquet        every user's history (training and held-out users)
    memory/memory.parquet       the profiles the generalist wrote (one per user)
    serving/memory/<key>.json   items appended since, and a refreshed profile (written here)

Appended items live in one small JSON file per user, written atomically: the file is the truth, so
every replica of a Serve app sees an append at its next request for that user (it re-indexes the user
when the file changed), and a redeploy keeps it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prime_ray.data.schema import Item, UserRecord
from prime_ray.data.store import read_examples, read_users
from prime_ray.memory.retrieval import Retriever, UserRetrieval
from prime_ray.memory.store import MEMORY_FILE, read_memory
from prime_ray.spec import JobSpec

SERVING_DIR = "serving"


class UnknownUser(LookupError):
    """The user has no memory in this job (and no inline history was given)."""

    def __init__(self, user_id: str, job_id: str, known: list[str]):
        self.user_id, self.job_id = user_id, job_id
        listed = ", ".join(known[:10]) + (f" ... ({len(known)} in all)" if len(known) > 10 else "")
        super().__init__(f"job {job_id} has no user {user_id!r} (its users: {listed}); give the `history` "
                         "inline for a user not seen in training")


class DuplicateItem(ValueError):
    """An appended item's id is already in the user's history (or twice in the request)."""


@dataclass(frozen=True)
class Recalled:
    profile: str | None
    episodes: tuple[Item, ...]
    scores: tuple[float, ...]


@dataclass
class _UserMemory:
    stamp: tuple[int, int] | None  # the appended file's (mtime_ns, size) this state was built from
    history: tuple[Item, ...]
    profile: str | None
    index: UserRetrieval


def _memory_file(root: Path, user_id: str) -> Path:
    return root / f"{hashlib.sha1(user_id.encode()).hexdigest()[:16]}.json"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, ensure_ascii=False))
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


class ServingMemory:
    """Profiles and episodic retrieval for every user of a finished job, extended by appended items."""

    def __init__(self, job_dir: str | Path, spec: JobSpec, retriever: Retriever | None = None):
        job_dir = Path(job_dir)
        self.job_id = spec.name
        self.top_k = spec.memory.top_k
        self.retriever = retriever or Retriever(spec.memory.retriever)
        self.users: dict[str, UserRecord] = read_users(job_dir / "ingest" / "users.parquet")
        self.profiles = _trained_profiles(job_dir)
        self.root = job_dir / SERVING_DIR / "memory"
        self._states: dict[str, _UserMemory] = {}
        self._lock = threading.Lock()  # appends of one process are serialized (read, extend, replace)

    def known(self, user_id: str) -> bool:
        return user_id in self.users

    def _appended(self, user_id: str) -> tuple[list[Item], str | None, tuple[int, int] | None]:
        path = _memory_file(self.root, user_id)
        stamp = _stamp(path)
        if stamp is None:
            return [], None, None
        document = json.loads(path.read_text())
        return [Item.model_validate(item) for item in document["added"]], document.get("profile"), stamp

    def state(self, user_id: str) -> _UserMemory:
        """The user's memory as of now (re-indexed when their appended items changed)."""
        if user_id not in self.users:
            raise UnknownUser(user_id, self.job_id, list(self.users))
        path = _memory_file(self.root, user_id)
        cached = self._states.get(user_id)
        if cached is not None and cached.stamp == _stamp(path):
            return cached
        added, profile, stamp = self._appended(user_id)
        history = (*self.users[user_id].history, *added)
        profile = profile if profile is not None else self.profiles.get(user_id)
        state = _UserMemory(stamp, history, profile, self.retriever.index(history))
        self._states[user_id] = state
        return state

    def recall(self, user_id: str, query: str, history: Sequence[Item] | None = None) -> Recalled:
        """Profile and the top-k episodes for `query`; with `history`, from those items alone (a new user)."""
        if history is not None:
            found = self.retriever.index(history).top_k(query, [item.id for item in history], self.top_k)
            return Recalled(None, found.items, found.scores)
        state = self.state(user_id)
        found = state.index.top_k(query, [item.id for item in state.history], self.top_k)
        return Recalled(state.profile, found.items, found.scores)

    def append(self, user_id: str, items: Sequence[Item], profile: str | None = None) -> tuple[Item, ...]:
        """Add items to a known user's memory (and, if given, a new profile); returns their history now."""
        with self._lock:
            history = self.state(user_id).history
            taken = {item.id for item in history}
            for item in items:
                if item.id in taken:
                    raise DuplicateItem(f"user {user_id!r} already has a history item {item.id!r}")
                taken.add(item.id)
            added, old_profile, _ = self._appended(user_id)
            _write_json(_memory_file(self.root, user_id), {
                "user_id": user_id,
                "added": [item.model_dump() for item in (*added, *items)],
                "profile": profile if profile is not None else old_profile,
            })
            return self.state(user_id).history

    def next_ids(self, user_id: str, count: int) -> list[str]:
        """Fresh item ids (`added-<n>`) for appended items that came without one."""
        taken = {item.id for item in self.state(user_id).history}
        out: list[str] = []
        n = len(taken)
        while len(out) < count:
            n += 1
            if f"added-{n}" not in taken:
                out.append(f"added-{n}")
        return out


def _trained_profiles(job_dir: Path) -> dict[str, str]:
    """user_id -> the profile the memory stage wrote (every example of a user carries the same one)."""
    memory_path = job_dir / "memory" / MEMORY_FILE
    if not memory_path.is_file():
        return {}
    users = {e.example_id: e.user_id for e in read_examples(job_dir / "ingest" / "examples.parquet")}
    profiles: dict[str, str] = {}
    for example_id, memory in read_memory(memory_path).items():
        if memory.profile and example_id in users:
            profiles.setdefault(users[example_id], memory.profile)
    return profiles
