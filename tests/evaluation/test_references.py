"""Non-LLM references against hand-computed values."""

from __future__ import annotations

import pytest

from prime_ray.data.schema import Example, Item, UserRecord
from prime_ray.evaluation.references import outcomes_by_split
from prime_ray.evaluation.report import reference_results
from prime_ray.spec import LabelTask, RankingTask, RatingTask, TextTask


def _user(uid: str, history: list[tuple[str, str]]) -> UserRecord:
    return UserRecord(user_id=uid, history=[Item(id=f"{uid}-{i}", input=item, output=out)
                                            for i, (item, out) in enumerate(history)])


def _example(user: UserRecord, item: str, gold: str, split: str) -> Example:
    return Example(example_id=f"{user.user_id}/{item}", user_id=user.user_id, split=split, input=item, output=gold,
                   memory_ids=[i.id for i in user.history])


A = _user("a", [("m1", "5"), ("m2", "4")])
B = _user("b", [("m1", "3"), ("m3", "1"), ("m4", "4")])
C = _user("c", [("m2", "2")])  # held out: not in the crowd
USERS = {u.user_id: u for u in (A, B, C)}
ROLES = {"a": "train", "b": "train", "c": "test_user"}
# crowd: 5 4 3 1 4 -> mean 3.4, most frequent 4; item m1: [5, 3], m3: [1]
BY_SPLIT = {
    "test_query": [_example(A, "m3", "2", "test_query")],
    "test_user": [_example(C, "m1", "5", "test_user"), _example(C, "m9", "3", "test_user")],
}


def test_rating_references_by_hand():
    refs = outcomes_by_split(RatingTask(), BY_SPLIT, USERS, ROLES)
    answers = {split: {name: [o.predicted for o in outs] for name, outs in by_name.items()}
               for split, by_name in refs.items()}
    assert answers["test_query"] == {"ref:global-mean": ["3.4"], "ref:most-frequent": ["4"],
                                     "ref:user-mean": ["4.5"], "ref:item-mean": ["1"]}
    # user c: own mean 2; m1 seen (mean 4), m9 unseen: the crowd's mean
    assert answers["test_user"] == {"ref:global-mean": ["3.4", "3.4"], "ref:most-frequent": ["4", "4"],
                                    "ref:user-mean": ["2", "2"], "ref:item-mean": ["4", "3.4"]}
    results = {(r.split, r.mode): r for r in reference_results(RatingTask(tolerance=1), BY_SPLIT, USERS, ROLES,
                                                                n_resamples=0, seed=0)}
    mae = {key: r.metrics["mae"].value for key, r in results.items()}
    assert mae[("test_user", "ref:global-mean")] == pytest.approx((1.6 + 0.4) / 2)
    assert mae[("test_user", "ref:user-mean")] == pytest.approx((3 + 1) / 2)
    assert mae[("test_user", "ref:item-mean")] == pytest.approx((1 + 0.4) / 2)
    assert mae[("test_query", "ref:item-mean")] == pytest.approx(1.0)
    assert results[("test_user", "ref:most-frequent")].metrics["accuracy"].value == pytest.approx(1.0)  # |4−5|, |4−3| ≤ 1
    assert all(r.parse_failures == 0 and r.is_reference for r in results.values())


def test_label_references_and_the_users_own_memory_only():
    task = LabelTask(labels=["yes", "no"])
    u = _user("u", [("m1", "no"), ("m2", "no"), ("m3", "yes")])
    v = _user("v", [("m1", "yes"), ("m5", "yes"), ("m6", "yes")])
    # u's training example on m3: its memory pool is the rest of u's history (leave-one-out)
    leave_one_out = Example(example_id="u/m3", user_id="u", split="test_query", input="m3", output="yes",
                            memory_ids=["u-0", "u-1"])
    refs = outcomes_by_split(task, {"test_query": [leave_one_out]}, {"u": u, "v": v}, {"u": "train", "v": "train"})
    got = {name: outs[0].predicted for name, outs in refs["test_query"].items()}
    # crowd: no no yes yes yes yes -> yes; u's pool: no no -> no; item m3 in the crowd: [yes]
    assert got == {"ref:majority": "yes", "ref:user-majority": "no", "ref:item-majority": "yes"}


def test_item_reference_left_out_when_no_item_recurs_and_ranking_has_none():
    task = TextTask()
    u = _user("u", [("post 1", "first headline"), ("post 2", "second headline")])
    ex = _example(u, "post 3", "third headline", "test_query")
    refs = outcomes_by_split(task, {"test_query": [ex]}, {"u": u}, {"u": "train"})
    assert {n: o[0].predicted for n, o in refs["test_query"].items()} == {"ref:user-latest": "second headline"}
    assert outcomes_by_split(RankingTask(), {"test_query": [ex]}, {"u": u}, {"u": "train"}) == {"test_query": {}}
    rating = outcomes_by_split(RatingTask(), {"test_query": [_example(_user("w", []), "m7", "3", "test_query")]},
                               USERS, ROLES)
    assert "ref:item-mean" not in rating["test_query"]
    assert rating["test_query"]["ref:user-mean"][0].predicted == "3.4"  # no history: the crowd's answer
