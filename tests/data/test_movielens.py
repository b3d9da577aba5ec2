"""MovieLens-100K in RecBole's TSV format: a small slice in the exact format, and the real files."""

import shutil

import pytest

from prime_ray.data.adapters.movielens import GENRES, fetch_movielens, read_movielens
from prime_ray.data.validation import DataError
from prime_ray.spec import LabelTask, SplitSpec


@pytest.fixture
def slice_dir(fixtures_dir):
    return fixtures_dir / "data" / "movielens"


def _ratings(slice_dir):
    rows = (slice_dir / "ml-100k.inter").read_text().splitlines()[1:]
    return [tuple(row.split("\t")) for row in rows]


def test_rating_task_orders_by_time_and_takes_latest_as_queries(slice_dir):
    result = read_movielens(slice_dir, "rating", SplitSpec(queries_per_user=2))
    assert result.problems == []
    assert [u.user_id for u in result.users] == ["1", "2", "3", "4", "5"]
    assert sum(len(u.history) + len(u.queries) for u in result.users) == len(_ratings(slice_dir))
    for user in result.users:
        items = user.history + user.queries
        assert [i.timestamp for i in items] == sorted(i.timestamp for i in items)
        assert len(user.queries) == 2
        expected = {(i, r) for u, i, r, _ in _ratings(slice_dir) if u == user.user_id}
        assert {(i.id, i.output) for i in items} == expected
    user1 = result.users[0]
    assert user1.profile == {"age": 24, "gender": "M", "occupation": "technician"}
    toy_story = next(i for u in result.users for i in u.history + u.queries if i.id == "1")
    assert toy_story.input == "Toy Story (1995). Genres: Animation, Children's, Comedy"


def test_genre_task_uses_the_first_listed_genre_and_skips_unknown(slice_dir):
    result = read_movielens(slice_dir, "genre")
    items = [i for u in result.users for i in u.history + u.queries]
    unknown = sum(1 for _, item, _, _ in _ratings(slice_dir) if item == "8")
    assert unknown > 0 and len(items) == len(_ratings(slice_dir)) - unknown
    by_id = {i.id: i for i in items}
    assert by_id["4"].input == "Alien (1979)" and by_id["4"].output == "Action"
    assert by_id["5"].output == "Crime"
    assert {i.output for i in items} <= set(GENRES)


def test_random_query_order_is_seeded(slice_dir):
    split = SplitSpec(queries_per_user=2, query_order="random")
    first = read_movielens(slice_dir, "rating", split, seed=1)
    again = read_movielens(slice_dir, "rating", split, seed=1)
    other = read_movielens(slice_dir, "rating", split, seed=2)
    queries = lambda r: [[q.id for q in u.queries] for u in r.users]  # noqa: E731
    assert queries(first) == queries(again)
    assert queries(first) != queries(other)
    latest = read_movielens(slice_dir, "rating", SplitSpec(queries_per_user=2))
    assert queries(first) != queries(latest)


def test_bad_lines_are_reported_and_the_rest_kept(slice_dir, tmp_path):
    for name in ("ml-100k.item", "ml-100k.user"):
        shutil.copy(slice_dir / name, tmp_path / name)
    good = (slice_dir / "ml-100k.inter").read_text()
    first = good.splitlines()[1].split("\t")
    bad = [
        "1\t2\tfive\t881250949",  # rating not a number
        "1\t999\t4\t881250949",  # unknown item
        "1\t2",  # too few fields
        "\t".join(first),  # the same user rates the same movie again
    ]
    (tmp_path / "ml-100k.inter").write_text(good + "\n".join(bad) + "\n")
    result = read_movielens(tmp_path, "rating", task=None)
    n = len(good.splitlines())
    inter = str(tmp_path / "ml-100k.inter")
    assert [str(p) for p in result.problems] == [
        f"{inter}:{n + 1}: rating: expected a number, got 'five'",
        f"{inter}:{n + 2}: item_id: '999' is not in ml-100k.item",
        f"{inter}:{n + 3}: expected 4 tab-separated fields, got 2",
        f"{inter}:{n + 4}: item_id: user {first[0]} rated item {first[1]} twice (first on line 2)",
    ]
    assert sum(len(u.history) + len(u.queries) for u in result.users) == n - 1


def test_ratings_outside_the_label_set_are_problems(slice_dir):
    result = read_movielens(slice_dir, "genre", task=LabelTask(labels=["Action", "Drama"]))
    assert result.problems and all("not one of the task's labels" in p.message for p in result.problems)
    assert {i.output for u in result.users for i in u.history + u.queries} == {"Action", "Drama"}


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="missing ml-100k.inter, ml-100k.item, ml-100k.user"):
        read_movielens(tmp_path)


def test_real_movielens_100k_from_the_recbole_wheel():
    try:
        directory = fetch_movielens()
    except DataError as e:
        pytest.skip(f"MovieLens-100K cannot be fetched here (no package registry?): {e}")
    assert fetch_movielens() == directory  # extracted once, reused
    result = read_movielens(None, "rating", SplitSpec(queries_per_user=2))
    assert result.problems == []
    assert len(result.users) == 943
    assert sum(len(u.history) + len(u.queries) for u in result.users) == 100_000
    assert all(len(u.queries) == 2 and len(u.history) >= 18 for u in result.users)
    assert {u.profile["gender"] for u in result.users} == {"F", "M"}
