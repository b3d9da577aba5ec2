"""The threads format (Change-My-View-like ranking data): one author per line."""

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
    assert len(past.candidates) == 3 and past.output == past.candidates[1]
    assert past.output.startswith("Studies of permanent DST")
    (query,) = owl.queries
    assert query.output in query.candidates and query.output.startswith("Meta-analyses")


def test_bad_threads_are_reported_in_the_format_s_own_terms(tmp_path):
    def thread(tid, *marks):
        return {"id": tid, "post": f"CMV: {tid}",
                "replies": [{"text": f"reply {i}", "persuasive": m} for i, m in enumerate(marks)]}

    lines = [
        {"author": "ok", "threads": [thread("t1", True, False)], "queries": [thread("q1", False, True)]},
        {"author": "none", "threads": [thread("t1", False, False)]},
        {"author": "two", "queries": [thread("q1", True, True)]},
        {"author": "alone", "threads": [thread("t1", True)]},
        {"author": "dup", "threads": [thread("t1", True, False)], "queries": [thread("t1", True, False)]},
        {"author": "ok", "threads": [thread("t1", True, False)]},
        {"author": "typo", "thread": []},
    ]
    path = tmp_path / "threads.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = read_threads(path)
    assert [u.user_id for u in result.users] == ["ok"]
    assert [str(p).removeprefix(f"{path}:") for p in result.problems] == [
        "2: threads.0.replies: exactly one reply must be marked persuasive, found 0",
        "3: queries.0.replies: exactly one reply must be marked persuasive, found 2",
        "4: threads.0.replies: a thread needs at least 2 replies to rank, got 1",
        "5: queries.0.id: duplicate item id 't1' (also threads.0)",
        "6: author: duplicate user id 'ok' (first on line 1)",
        "7: thread: unknown field",
    ]
