"""MovieLens-100K in RecBole's TSV format: a small slice in the exact format, and the real files."""

import shutil

import pytest

from prime_ray.data.adapters.movielens import GENRES, fetch_movielens, read_movielens
from prime_ray.data.sources import load_source
from prime_ray.data.validation import DataError
from prime_ray.spec import LabelTask, MovieLensSource, SplitSpec


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
        f"{inter}:{n + 2}: item_id: item '999' cannot be used: it is not in ml-100k.item",
        f"{inter}:{n + 3}: expected 4 tab-separated fields, got 2",
        f"{inter}:{n + 4}: item_id: user {first[0]} rated item {first[1]} twice (first on line 2)",
    ]
    assert sum(len(u.history) + len(u.queries) for u in result.users) == n - 1


def test_ratings_outside_the_label_set_are_problems(slice_dir):
    result = read_movielens(slice_dir, "genre", task=LabelTask(labels=["Action", "Drama"]))
    assert result.problems and all("not one of the task's labels" in p.message for p in result.problems)
    assert {i.output for u in result.users for i in u.history + u.queries} == {"Action", "Drama"}


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="expected one RecBole .inter file"):
        read_movielens(tmp_path)
    (tmp_path / "ml-1m.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    with pytest.raises(DataError, match="missing ml-1m.item"):
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


def test_the_leakage_check_on_movielens_100k_finds_only_movies_listed_twice():
    """Ratings of the same movie by other users, each at their own time, are data, not leakage. What the
    check finds is real: ml-100k lists some movies twice under two ids (items 1256 and 1257 are both
    "Designated Mourner, The (1997)"), and 11 times one user rated both copies with one of them among
    the user's two latest ratings (a query)."""
    try:
        directory = fetch_movielens()
    except DataError as e:
        pytest.skip(f"MovieLens-100K cannot be fetched here (no package registry?): {e}")
    result = load_source(MovieLensSource())
    assert result.leaks == len(result.problems) == 11
    assert all(p.message.split(" has the input of ")[1].startswith("its own query") for p in result.problems)
    titles = {}
    for line in (directory / "ml-100k.item").read_text(encoding="utf-8").splitlines()[1:]:
        item_id, title, year, _ = line.split("\t")
        titles[item_id] = (title, year)
    inter = (directory / "ml-100k.inter").read_text().splitlines()
    for problem in result.problems:
        assert (problem.file, problem.field) == (str(directory / "ml-100k.inter"), "item_id")
        user_id, item_id = inter[problem.line - 1].split("\t")[:2]
        query_id = problem.message.split("'")[-2]
        assert problem.message.startswith(f"user {user_id!r} item {item_id!r}")
        assert item_id != query_id and titles[item_id] == titles[query_id]  # one movie, two ids
    assert "user '782' item '1256' has the input of its own query '1257'" in " ".join(p.message for p in result.problems)


# ------------------------------------------------------------- other MovieLens variants, as RecBole has them

def _write(folder, name, files):
    folder.mkdir(exist_ok=True)
    for suffix, lines in files.items():
        (folder / f"{name}.{suffix}").write_text("\n".join(lines) + "\n")
    return folder


ML_1M = {  # RecBole's ml-1m: `genre` column, MovieLens-1M's age and occupation codes
    "inter": ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
              "1\t1193\t5\t978300760", "1\t661\t3\t978302109", "1\t914\t3\t978301968",
              "2\t1193\t5\t978298413", "2\t3105\t5\t978298673", "2\t2355\t4\t978299000",
              "3\t661\t4\t978297867", "3\t2355\t2\t978298147"],
    "item": ["item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq",
             "661\tJames and the Giant Peach\t1996\tAnimation Children's Musical",
             "914\tMy Fair Lady\t1964\tMusical Romance",
             "1193\tOne Flew Over the Cuckoo's Nest\t1975\tDrama",
             "2355\tBug's Life, A\t1998\tAnimation Children's Comedy",
             "3105\tAwakenings\t1990\tDrama"],
    "user": ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
             "1\t1\tF\t10\t48067", "2\t56\tM\t16\t70072", "3\t25\tM\t15\t55117"],
}


def test_recbole_ml_1m_with_genre_column_and_coded_profiles(tmp_path):
    folder = _write(tmp_path / "ml-1m", "ml-1m", ML_1M)
    result = read_movielens(folder, "rating", SplitSpec(queries_per_user=1))
    assert result.problems == []
    assert [u.user_id for u in result.users] == ["1", "2", "3"]
    assert sum(len(u.history) + len(u.queries) for u in result.users) == 8
    assert [u.profile for u in result.users] == [
        {"age": "Under 18", "gender": "F", "occupation": "K-12 student"},
        {"age": "56+", "gender": "M", "occupation": "self-employed"},
        {"age": "25-34", "gender": "M", "occupation": "scientist"},
    ]
    peach = next(i for i in result.users[0].history + result.users[0].queries if i.id == "661")
    assert peach.input == "James and the Giant Peach (1996). Genres: Animation, Children's, Musical"
    genre = read_movielens(folder, "genre")
    assert {i.output for u in genre.users for i in u.history + u.queries} == {"Animation", "Musical", "Drama"}
    assert genre.notes == ["genre labels in this data (3): Animation, Drama, Musical"]  # first-listed genres


ML_LATEST_SMALL = {  # ml-latest-small converted to RecBole atomic files: newer genres, no user file
    "inter": ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
              "1\t1\t4.0\t964982703", "1\t3\t4.0\t964981247", "1\t6\t4.0\t964982224",
              "1\t47\t5.0\t964983815", "2\t318\t3.0\t1445714835", "2\t333\t4.0\t1445715029",
              "2\t1\t3.5\t1445714900", "3\t31\t0.5\t1306463578", "3\t114180\t4.5\t1306464000"],
    "item": ["item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq",
             "1\tToy Story\t1995\tAdventure Animation Children Comedy Fantasy",
             "3\tGrumpier Old Men\t1995\tComedy Romance",
             "6\tHeat\t1995\tAction Crime Thriller",
             "31\tDangerous Minds\t1995\tDrama",
             "47\tSeven (a.k.a. Se7en)\t1995\tMystery Thriller",
             "318\tShawshank Redemption, The\t1994\tCrime Drama",
             "333\tTommy Boy\t1995\tIMAX Comedy",
             "114180\tThe Maze Runner\t2014\t(no genres listed)"],
}


def test_ml_latest_small_keeps_every_rating_with_newer_genres(tmp_path):
    folder = _write(tmp_path / "ml-latest-small", "ml-latest-small", ML_LATEST_SMALL)
    rating = read_movielens(folder, "rating", SplitSpec(queries_per_user=1))
    assert rating.problems == []
    assert sum(len(u.history) + len(u.queries) for u in rating.users) == 9  # every rating, IMAX and no genre too
    assert all(u.profile == {} for u in rating.users)  # no .user file
    items = {(u.user_id, i.id): i for u in rating.users for i in u.history + u.queries}
    assert items[("2", "333")].input == "Tommy Boy (1995). Genres: IMAX, Comedy"
    assert items[("3", "114180")].input == "The Maze Runner (2014)" and items[("3", "31")].output == "0.5"

    genre = read_movielens(folder, "genre")
    outputs = {(u.user_id, i.id): i.output for u in genre.users for i in u.history + u.queries}
    assert len(outputs) == 8  # the movie without a genre has nothing to predict
    assert outputs[("1", "1")] == "Adventure" and outputs[("2", "333")] == "IMAX"
    assert genre.notes == ["genre labels in this data (7): Action, Adventure, Comedy, Crime, Drama, Mystery, IMAX"]


def test_a_latin_1_title_costs_only_its_movie_and_says_why(slice_dir, tmp_path):
    """`4\tMis\xe9rables, Les\t1995\tDrama War` on line 5 of the item file: one located problem per line."""
    for name in ("ml-100k.inter", "ml-100k.user"):
        shutil.copy(slice_dir / name, tmp_path / name)
    lines = (slice_dir / "ml-100k.item").read_bytes().splitlines()
    lines[4] = b"4\tMis\xe9rables, Les\t1995\tDrama War"
    (tmp_path / "ml-100k.item").write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # and a byte-order mark
    result = read_movielens(tmp_path, "rating")
    item = tmp_path / "ml-100k.item"
    assert str(result.problems[0]) == f"{item}:5: movie_title: not valid UTF-8 (byte 0xE9)"
    ratings_of_4 = [r for r in _ratings(slice_dir) if r[1] == "4"]
    assert len(result.problems) == 1 + len(ratings_of_4)
    assert all(p.message == f"item '4' cannot be used: its line was rejected ({item}:5: movie_title: "
               "not valid UTF-8 (byte 0xE9))" for p in result.problems[1:])
    kept = sum(len(u.history) + len(u.queries) for u in result.users)
    assert kept == len(_ratings(slice_dir)) - len(ratings_of_4)


def test_a_timestamp_out_of_64_bits_is_a_problem_of_its_line(slice_dir, tmp_path):
    for name in ("ml-100k.item", "ml-100k.user"):
        shutil.copy(slice_dir / name, tmp_path / name)
    good = (slice_dir / "ml-100k.inter").read_text()
    (tmp_path / "ml-100k.inter").write_text(good + "1\t2\t4\t881250949000000000000\n")
    result = read_movielens(tmp_path, "rating")
    n = len(good.splitlines()) + 1
    assert [str(p) for p in result.problems] == [
        f"{tmp_path / 'ml-100k.inter'}:{n}: timestamp: out of range (a 64-bit integer), got 881250949000000000000"]
