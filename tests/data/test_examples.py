"""The example builder: leave-one-out, user splits, limits, and determinism for a seed."""

from prime_ray.data.examples import build_examples, held_out_count, latest
from prime_ray.data.schema import Item, UserRecord
from prime_ray.spec import DataSpec


def _users(n, history=5, queries=2):
    return [
        UserRecord(
            user_id=f"u{u:02d}",
            history=[Item(id=f"h{k}", input=f"in {u}.{k}", output=str(1 + k % 5), timestamp=1000 + k) for k in range(history)],
            queries=[Item(id=f"q{k}", input=f"query {u}.{k}", output="3", timestamp=2000 + k) for k in range(queries)],
        )
        for u in range(n)
    ]


def _data(**kwargs):
    return DataSpec.model_validate({"source": {"format": "jsonl", "path": "x.jsonl"}, "task": {"kind": "rating"}, **kwargs})


def test_leave_one_out_and_test_examples():
    users = _users(10)
    built = build_examples(users, _data(split={"held_out_users": 0.3}), seed=0)
    assert sorted(built.roles.values()).count("test_user") == 3
    by_user = {u.user_id: u for u in users}
    for user_id, role in built.roles.items():
        mine = [e for e in built.examples if e.user_id == user_id]
        history = [i.id for i in by_user[user_id].history]
        if role == "test_user":
            assert [e.split for e in mine] == ["test_user", "test_user"]
            assert all(e.memory_ids == history for e in mine)
            continue
        train = [e for e in mine if e.split == "train"]
        assert [e.example_id for e in train] == [f"{user_id}/{h}" for h in history]
        for example, item in zip(train, by_user[user_id].history):
            assert example.memory_ids == [h for h in history if h != item.id]  # the rest, never itself
            assert (example.input, example.output, example.timestamp) == (item.input, item.output, item.timestamp)
        tests = [e for e in mine if e.split == "test_query"]
        assert [e.example_id for e in tests] == [f"{user_id}/q0", f"{user_id}/q1"]
        assert all(e.memory_ids == history for e in tests)
    assert built.count("train") == 7 * 5 and built.count("test_query") == 7 * 2 and built.count("test_user") == 3 * 2


def test_same_seed_same_examples_other_seed_differs():
    users = _users(12)
    data = _data(max_users=8, max_train_examples_per_user=3, split={"held_out_users": 0.25})
    first, again, other = (build_examples(users, data, seed=s) for s in (7, 7, 8))
    assert first == again
    assert (first.roles, first.examples) != (other.roles, other.examples)
    # the file's row order does not change the outcome
    assert build_examples(list(reversed(users)), data, seed=7).roles == first.roles


def test_limits_users_history_and_train_examples():
    built = build_examples(_users(6, history=8), _data(max_users=4, max_history=3, max_train_examples_per_user=2), seed=1)
    assert len(built.users) == 4 and set(built.roles) == {u.user_id for u in built.users}
    for user in built.users:
        assert [i.id for i in user.history] == ["h5", "h6", "h7"]  # the latest three
        train = [e for e in built.examples if e.user_id == user.user_id and e.split == "train"]
        if built.roles[user.user_id] == "train":
            assert len(train) == 2 and all(len(e.memory_ids) == 2 for e in train)


def test_at_least_one_user_of_each_role():
    assert held_out_count(2, 0.01) == 1 and held_out_count(2, 0.99) == 1 and held_out_count(10, 0.2) == 2
    assert held_out_count(1, 0.5) == 0 and held_out_count(10, 0.0) == 0
    built = build_examples(_users(2), _data(split={"held_out_users": 0.05}), seed=0)
    assert sorted(built.roles.values()) == ["test_user", "train"]


def test_latest_uses_timestamps_when_all_items_have_one():
    items = [Item(id=i, input="x", output="1", timestamp=t) for i, t in (("a", 3), ("b", 1), ("c", 2))]
    assert [i.id for i in latest(items, 2)] == ["c", "a"]
    undated = [item.model_copy(update={"timestamp": None}) for item in items]
    assert [i.id for i in latest(undated, 2)] == ["b", "c"]
