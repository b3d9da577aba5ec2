"""The threads format (Change-My-View-like ranking data): one author per line, threads as they are."""

import json

from prime_ray.data.adapters.threads import read_threads
from prime_ray.spec import RankingTask


def test_threads_become_ranking_items(fixtures_dir):
    result = read_threads(fixtures_dir / "data" / "threads" / "threads.jsonl", RankingTask())
    assert result.problems == []
    assert [u.user_id for u in result.users] == ["civic_owl", "quiet_fern", "late_heron"]
    owl = result.users[0]
    assert owl.profile == {"flair": "3 deltas"}
    past = owl.history[1]
    assert past.id == "t2" and past.input == "CMV: Daylight saving time should be abolished."
    assert len(past.candidates) == 3 and past.output == past.candidates[1] and past.also_correct is None
    assert past.output.startswith("Studies of permanent DST")
    (query,) = owl.queries
    assert query.output in query.candidates and query.output.startswith("Meta-analyses")


def _thread(tid, *marks, texts=None):
    texts = texts or [f"reply {i}" for i in range(len(marks))]
    return {"id": tid, "post": f"CMV: {tid}",
            "replies": [{"text": text, "persuasive": mark} for text, mark in zip(texts, marks)]}


def _write(tmp_path, lines):
    path = tmp_path / "threads.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_bad_threads_are_skipped_one_by_one_in_the_format_s_own_terms(tmp_path):
    lines = [
        {"author": "ok", "threads": [_thread("t1", True, False)], "queries": [_thread("q1", False, True)]},
        {"author": "none", "threads": [_thread("t1", False, False)]},
        {"author": "two", "queries": [_thread("q1", True, True)]},
        {"author": "alone", "threads": [_thread("t1", True)]},
        {"author": "dup", "threads": [_thread("t1", True, False)], "queries": [_thread("t1", True, False)]},
        {"author": "ok", "threads": [_thread("t1", True, False)]},
        {"author": "typo", "thread": []},
        {"author": "mixed", "threads": [_thread("t1", True, False), {"id": "t2", "post": "CMV: x"}, _thread("t3", False)]},
    ]
    path = _write(tmp_path, lines)
    result = read_threads(path, RankingTask())
    assert [u.user_id for u in result.users] == ["ok", "two", "dup", "mixed"]
    assert [str(p).removeprefix(f"{path}:") for p in result.problems] == [
        "2: threads.0.replies: no reply is marked persuasive",
        "4: threads.0.replies: a thread needs at least 2 replies to rank, got 1",
        "5: queries.0.id: duplicate thread id 't1' (also threads.0)",
        "6: author: duplicate user id 'ok' (first on line 1)",
        "7: thread: unknown field",
        "8: threads.1.replies: field required",
        "8: threads.2.replies: a thread needs at least 2 replies to rank, got 1",
    ]
    by_id = {u.user_id: u for u in result.users}
    assert [t.id for t in by_id["dup"].history] == ["t1"] and by_id["dup"].queries == []
    assert [t.id for t in by_id["mixed"].history] == ["t1"]  # its two bad threads cost only themselves


def test_change_my_view_threads_with_one_two_and_three_deltas_and_a_deleted_body(tmp_path):
    """Threads as the CMV dumps have them: several deltas, `[deleted]` bodies, twice-escaped entities."""
    one = _thread("t1", True, False, False, texts=["Fares fund service.", "Cars win.", "Buses are slow."])
    two = _thread("t2", True, False, True, texts=["Winter mornings get darker.", "Meh.", "Farmers never asked for it."])
    three = _thread("q1", True, True, False, True,
                    texts=["Older pupils gain a little.", "Young ones gain nothing.", "Kids need play.", "Reading &amp;amp; maths differ."])
    deleted = _thread("t3", False, True, False, texts=["[deleted]", "Servers earn more with tips.", "Just tip."])
    gone = _thread("t4", True, False, texts=["[removed]", "Only this one is left."])
    path = _write(tmp_path, [{"author": "civic_owl", "threads": [one, two, deleted, gone], "queries": [three]}])
    result = read_threads(path, RankingTask())

    (owl,) = result.users
    assert [str(p).removeprefix(f"{path}:") for p in result.problems] == [
        "1: threads.3.replies: a thread needs at least 2 replies to rank, got 1 after dropping 1 deleted",
    ]
    assert [t.id for t in owl.history] == ["t1", "t2", "t3"]
    t1, t2, t3 = owl.history
    assert (t1.output, t1.also_correct) == ("Fares fund service.", None)
    assert (t2.output, t2.also_correct) == ("Winter mornings get darker.", ["Farmers never asked for it."])
    assert t3.candidates == ["Servers earn more with tips.", "Just tip."] and t3.output == "Servers earn more with tips."
    (query,) = owl.queries
    assert query.output == "Older pupils gain a little."
    assert query.also_correct == ["Young ones gain nothing.", "Reading & maths differ."]
    assert "Reading & maths differ." in query.candidates  # &amp;amp; unescaped to &


def test_any_persuasive_reply_is_a_hit_when_the_answer_is_ranked(tmp_path):
    """The eval stage ranks candidates (the parsed answer first, then by score): the best-placed
    persuasive reply gives the rank, so Hit@1 holds when the model picks the second delta."""
    from prime_ray.data.examples import build_examples
    from prime_ray.evaluation.answering import Generated, answer_outcome
    from prime_ray.spec import DataSpec, PromptMode

    texts = ["Older pupils gain a little.", "Young ones gain nothing.", "Kids need play."]
    path = _write(tmp_path, [{"author": "owl", "threads": [_thread("t1", True, False)],
                              "queries": [_thread("q1", True, True, False, texts=texts)]}])
    users = read_threads(path, RankingTask()).users
    data = DataSpec.model_validate({"source": {"format": "threads", "path": str(path)}, "task": {"kind": "ranking"},
                                    "split": {"held_out_users": 0}})
    (query,) = [e for e in build_examples(users, data, seed=0).examples if e.split == "test_query"]
    assert query.also_correct == ["Young ones gain nothing."]

    def rank(answer, scores):
        gen = Generated(example_id=query.example_id, text=f"Answer: {answer}", completion_tokens=3,
                         finish_reason="stop", scores=scores)
        return answer_outcome(query, PromptMode.direct, gen, RankingTask())[0].gold_rank

    assert rank("Young ones gain nothing.", [-3.0, -1.0, -2.0]) == 1  # the second delta, answered
    assert rank("Kids need play.", [-3.0, -1.0, -2.0]) == 2  # wrong answer, then the second delta by score
    assert rank("Kids need play.", [-1.0, -3.0, -2.0]) == 2  # wrong answer, then the first delta by score
