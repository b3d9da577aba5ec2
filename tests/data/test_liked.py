"""MovieLens's `liked` task, the user filters, and label balancing per split (hand-computed counts)."""

from __future__ import annotations

from collections import Counter

import pytest

from prime_ray.data.examples import build_examples
from prime_ray.data.schema import Item, UserRecord
from prime_ray.data.sources import load_source, parse_source_arg
from prime_ray.spec import DataSpec, MovieLensSource, SpecError, parse_spec


@pytest.fixture
def slice_dir(fixtures_dir):
    return fixtures_dir / "data" / "movielens"


def _spec(slice_dir, **source) -> DataSpec:
    return DataSpec.model_validate({
        "source": {"format": "movielens-100k", "path": str(slice_dir), "task": "liked", **source},
        "task": {"kind": "label", "labels": ["yes", "no"]},
        "split": {"queries_per_user": 2},
    })


def test_liked_relabels_ratings_of_four_or_more(slice_dir):
    data = _spec(slice_dir)
    loaded = load_source(data.source, data)
    assert loaded.problems == [] and [u.user_id for u in loaded.users] == ["1", "2", "3", "4", "5"]
    # user 5 in time order: 5 1 5 | queries 2 4
    user5 = loaded.users[4]
    assert [i.output for i in user5.history] == ["yes", "no", "yes"] and [i.output for i in user5.queries] == ["no", "yes"]
    assert user5.history[0].id == "4" and user5.history[0].input.startswith("Alien (1979). Genres: Action")


def test_user_filters_by_hand(slice_dir):
    # history like-rates (2 queries per user held out): u1 1/4, u2 1/3, u3 1/5, u4 1/2, u5 2/3;
    # the crowd's: 6 likes of 17 history ratings = 0.353; distances .103 .020 .153 .147 .314
    def kept(**source):
        data = _spec(slice_dir, **source)
        return [u.user_id for u in load_source(data.source, data).users]

    assert kept(min_like_rate_distance=0.15) == ["3", "5"]
    assert kept(min_ratings=6) == ["1", "3"]  # users 1 and 3 have 6 and 7 ratings; the others 4 or 5
    assert kept(min_ratings=6, min_like_rate_distance=0.15) == ["3"]
    rating = DataSpec.model_validate({"source": {"format": "movielens-100k", "path": str(slice_dir), "min_ratings": 7},
                                      "task": {"kind": "rating"}})
    users = load_source(rating.source, rating).users
    assert [u.user_id for u in users] == ["3"] and users[0].queries[0].output in {"1", "2", "3", "4", "5"}


def test_balanced_binary_split_counts():
    # four users alike: history yes yes yes no yes, queries yes no; one held out (0.25 of 4)
    users = [UserRecord(user_id=f"u{n}",
                        history=[Item(id=f"h{k}", input=f"movie {n}.{k}", output=o, timestamp=k)
                                 for k, o in enumerate(["yes", "yes", "yes", "no", "yes"])],
                        queries=[Item(id=f"q{k}", input=f"query {n}.{k}", output=o, timestamp=10 + k)
                                 for k, o in enumerate(["yes", "no"])])
             for n in range(4)]
    data = {"source": {"format": "jsonl", "path": "x.jsonl"}, "task": {"kind": "label", "labels": ["yes", "no"]},
            "split": {"held_out_users": 0.25}}
    plain = build_examples(users, DataSpec.model_validate(data), seed=0)
    counts = Counter((e.split, e.output) for e in plain.examples)
    assert counts == {("train", "yes"): 12, ("train", "no"): 3, ("test_query", "yes"): 3, ("test_query", "no"): 3,
                      ("test_user", "yes"): 1, ("test_user", "no"): 1}
    balanced = build_examples(users, DataSpec.model_validate({**data, "balance_labels": True}), seed=0)
    counts = Counter((e.split, e.output) for e in balanced.examples)
    assert counts == {("train", "yes"): 3, ("train", "no"): 3, ("test_query", "yes"): 3, ("test_query", "no"): 3,
                      ("test_user", "yes"): 1, ("test_user", "no"): 1}
    # the choice is seeded and independent of the input order; the users keep their whole history
    again = build_examples(list(reversed(users)), DataSpec.model_validate({**data, "balance_labels": True}), seed=0)
    assert sorted(e.example_id for e in again.examples) == sorted(e.example_id for e in balanced.examples)
    assert all(len(u.history) == 5 for u in balanced.users)


def test_spec_rules_for_liked():
    base = {"name": "j", "data": {"source": {"format": "movielens-100k", "task": "liked"},
                                  "task": {"kind": "label", "labels": ["Yes", "No"]}}}
    assert parse_spec(base).data.source.task == "liked"
    with pytest.raises(SpecError, match=r"data\.task\.labels: MovieLens task 'liked' needs labels \[yes, no\]"):
        parse_spec({**base, "data": {**base["data"], "task": {"kind": "label", "labels": ["like", "dislike"]}}})
    with pytest.raises(SpecError, match="data.balance_labels|balance_labels needs a label task"):
        parse_spec({"name": "j", "data": {"source": {"format": "jsonl", "path": "x"}, "task": {"kind": "rating"},
                                          "balance_labels": True}})
    with pytest.raises(SpecError, match=r"data\.source\.min_like_rate_distance: needs ratings"):
        parse_spec({"name": "j", "data": {"source": {"format": "movielens-100k", "task": "genre", "min_like_rate_distance": 0.2},
                                          "task": {"kind": "label", "labels": ["Drama", "Comedy"]}}})
    assert parse_source_arg("movielens-100k:liked") == MovieLensSource(task="liked")
