"""One entry point for every data source: the job spec's `data.source`, or a CLI argument naming one."""

from __future__ import annotations

from pathlib import Path

from prime_ray.data.adapters.lamp import read_lamp
from prime_ray.data.adapters.movielens import RECBOLE_REQUIREMENT, movielens_files, read_movielens
from prime_ray.data.adapters.threads import read_threads
from prime_ray.data.derived import derive_movielens
from prime_ray.data.jsonl import read_jsonl
from prime_ray.data.leakage import remove_leakage
from prime_ray.data.validation import DataError, LoadResult
from prime_ray.paths import file_digest
from prime_ray.spec import (
    DataSource,
    DataSpec,
    JsonlSource,
    LampSource,
    MovieLensSource,
    MovieLensTask,
    RatingTask,
    ThreadsSource,
)

SOURCE_FORMS = (
    "movielens-100k (ratings), movielens-100k:genre, movielens-100k:liked, a directory holding RecBole's "
    "<name>.{inter,item,user} (DIR or DIR:genre), "
    "a .jsonl file (native; --format threads for threads), "
    "lamp:QUESTIONS.json,OUTPUTS.json or lamp:QUESTIONS.json (a split without outputs)"
)
# The task after `movielens-100k:` (none: ratings), and after a RecBole directory's `DIR:`.
_NAMED_TASKS: dict[str, MovieLensTask] = {"": "rating", "rating": "rating", "genre": "genre", "liked": "liked"}
_DIRECTORY_TASKS: dict[str, MovieLensTask] = {"rating": "rating", "genre": "genre"}


def load_source(source: DataSource, spec: DataSpec | None = None, *, seed: int = 0) -> LoadResult:
    """The valid users of `source` and a problem for every bad row.

    With `spec`, outputs are also checked against its task and MovieLens queries follow its split;
    `seed` drives MovieLens's random query choice (`split.query_order: random`).
    Every source then goes through the leakage check (leakage.py): history items holding a query's
    input are removed and reported, and counted in `LoadResult.leaks`.
    Raises DataError when the source cannot be read at all.
    """
    task = spec.task if spec is not None else None
    if isinstance(source, JsonlSource):
        return remove_leakage(read_jsonl(source.path, task), source.path)
    if isinstance(source, ThreadsSource):
        return remove_leakage(read_threads(source.path, task), source.path)
    if isinstance(source, LampSource):
        return remove_leakage(read_lamp(source.questions, source.outputs, task), source.questions)
    if isinstance(source, MovieLensSource):
        split = spec.split if spec is not None else None
        if source.task == "liked":  # read as ratings (checked as 1–5 ratings), relabelled by derive_movielens
            loaded = read_movielens(source.path, "rating", split, seed, RatingTask(min=1, max=5))
        else:
            loaded = read_movielens(source.path, source.task, split, seed, task)
        return remove_leakage(derive_movielens(loaded, source), loaded.file or describe_source(source))
    raise TypeError(f"unknown data source {source!r}")


def parse_source_arg(text: str, format: str | None = None) -> DataSource:
    """A source named on the command line (see SOURCE_FORMS); `format` picks `threads` for a .jsonl file."""
    name, _, option = text.partition(":")
    if name == "movielens-100k":
        named = _NAMED_TASKS.get(option)
        if named is None:
            raise ValueError(f"unknown MovieLens task {option!r}: use movielens-100k, movielens-100k:genre "
                             "or movielens-100k:liked")
        return MovieLensSource(task=named)
    if name == "lamp":
        questions, comma, outputs = option.partition(",")
        if not questions or (comma and not outputs):
            raise ValueError("a LaMP source is lamp:QUESTIONS.json,OUTPUTS.json (or lamp:QUESTIONS.json)")
        return LampSource(questions=questions, outputs=outputs or None)
    folder, _, suffix = text.rpartition(":")
    task = _DIRECTORY_TASKS.get(suffix)
    if task is not None and Path(folder).is_dir():
        return MovieLensSource(path=folder, task=task)
    path = Path(text)
    if path.is_dir():
        return MovieLensSource(path=text)
    if format == "threads":
        return ThreadsSource(path=text)
    if format not in (None, "jsonl"):
        raise ValueError(f"unknown format {format!r}: use jsonl or threads")
    if format == "jsonl" or path.suffix == ".jsonl":
        return JsonlSource(path=text)
    raise ValueError(f"cannot tell what {text!r} is; a source is one of: {SOURCE_FORMS}")


def source_fingerprint(source: DataSource) -> dict[str, str]:
    """What the data behind a source is: a sha256 per file, so edited data counts as a new input.

    MovieLens without a path is the pinned recbole wheel's copy, named by its requirement.
    """
    if isinstance(source, (JsonlSource, ThreadsSource)):
        files = [Path(source.path)]
    elif isinstance(source, LampSource):
        files = [Path(source.questions)] + ([Path(source.outputs)] if source.outputs else [])
    elif source.path is not None:
        try:
            files = list(movielens_files(source.path).values())
        except DataError:
            return {str(source.path): "missing"}
    else:
        return {"movielens-100k": RECBOLE_REQUIREMENT}
    return {str(path): file_digest(path) if path.is_file() else "missing" for path in files}


def describe_source(source: DataSource) -> str:
    """A source as a person would name it in a message."""
    if isinstance(source, MovieLensSource):
        return f"movielens {source.path} ({source.task})" if source.path else f"movielens-100k ({source.task})"
    if isinstance(source, LampSource):
        return f"LaMP {source.questions}" + (f" + {source.outputs}" if source.outputs else " (no outputs)")
    return f"{source.format} {source.path}"
