"""users.parquet and examples.parquet: what is written is what is read back."""

import pyarrow.parquet as pq

from prime_ray.data.schema import Example, Item, UserRecord
from prime_ray.data.store import read_examples, read_user_roles, read_users, write_examples, write_users


def test_users_round_trip(tmp_path):
    users = [
        UserRecord(user_id="u1", profile={"age": 24, "tags": ["a", "b"], "nested": {"x": 1.5}},
                   history=[Item(id="h1", input="post", output="b", timestamp=5, candidates=["a", "b"]),
                            Item(id="h2", input="Heat (1995)", output="4")],
                   queries=[Item(id="q1", input="Fargo", output="5", timestamp=9)]),
        UserRecord(user_id="u2"),
    ]
    path = tmp_path / "users.parquet"
    write_users(path, users, {"u1": "train", "u2": "test_user"})
    assert read_users(path) == {"u1": users[0], "u2": users[1]}
    assert read_user_roles(path) == {"u1": "train", "u2": "test_user"}
    history = pq.read_schema(path).field("history").type
    assert str(history.value_type.field("candidates").type) == "list<element: string>"  # nested, not JSON text


def test_examples_round_trip_and_split_filter(tmp_path):
    examples = [
        Example(example_id="u1/h1", user_id="u1", split="train", input="x", output="4", memory_ids=["h2"]),
        Example(example_id="u1/q1", user_id="u1", split="test_query", input="y", output="b",
                candidates=["a", "b"], timestamp=7, memory_ids=["h1", "h2"]),
        Example(example_id="u2/q1", user_id="u2", split="test_user", input="z", output="1", memory_ids=[]),
    ]
    path = tmp_path / "examples.parquet"
    write_examples(path, examples)
    assert read_examples(path) == examples
    assert read_examples(path, split="test_query") == [examples[1]]
    assert read_examples(path, split="train") == [examples[0]]
