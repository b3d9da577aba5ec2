"""LaMP's questions/outputs JSON: profile entries become history, the question with its gold the query."""

import json

import pytest

from prime_ray.data.adapters.lamp import read_lamp
from prime_ray.data.validation import DataError
from prime_ray.spec import LabelTask


@pytest.fixture
def lamp(fixtures_dir):
    def files(task):
        folder = fixtures_dir / "data" / "lamp" / task
        return folder / "dev_questions.json", folder / "dev_outputs.json"
    return files


def test_movie_tagging_maps_description_to_tag(lamp):
    result = read_lamp(*lamp("LaMP_2"))
    assert result.problems == []
    assert [u.user_id for u in result.users] == ["110", "111", "112"]
    user = result.users[0]
    assert [(i.id, i.output) for i in user.history] == [("1100", "sci-fi"), ("1101", "sci-fi"), ("1102", "comedy")]
    assert user.history[0].input.startswith("A crew aboard a mining ship")
    (query,) = user.queries
    assert query.id == "110" and query.output == "sci-fi"
    # the instruction and the tag list are LaMP's prompt, not the query: the job spec words the task
    assert query.input == "A young farm boy joins a rebellion to rescue a princess from an evil empire."


def test_headlines_map_text_to_title_with_dates(lamp):
    result = read_lamp(*lamp("LaMP_4"))
    assert result.problems == []
    user = result.users[0]
    assert user.history[0].output == "New Bus Routes Reach The Suburbs"
    assert user.history[0].timestamp == 1393718400  # 2014-03-02 UTC
    assert user.queries[0].input.startswith("City council votes") and user.queries[0].output == "Bike Lanes Are Here To Stay"


def test_bad_questions_are_reported_and_the_rest_kept(lamp, tmp_path):
    questions_path, outputs_path = lamp("LaMP_2")
    questions = json.loads(questions_path.read_text())
    outputs = json.loads(outputs_path.read_text())
    del questions[0]["profile"][1]["tag"]
    questions[1]["profile"][0]["date"] = "last week"
    questions[2]["profile"][0]["description"] = ["not", "text"]
    outputs["golds"] = [g for g in outputs["golds"] if g["id"] != "112"] + [{"id": "9"}]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "o.json").write_text(json.dumps(outputs))
    result = read_lamp(tmp_path / "q.json", tmp_path / "o.json")
    assert result.users == []
    assert sorted(str(p) for p in result.problems) == sorted([
        f"{tmp_path / 'o.json'}: golds.2: expected {{\"id\": string, \"output\": string}}",
        f"{tmp_path / 'q.json'}: 0.profile.1.tag: field required",
        f"{tmp_path / 'q.json'}: 1.profile.0.date: expected YYYY-MM-DD or a year, got 'last week'",
        f"{tmp_path / 'q.json'}: 2.profile.0.description: expected a string, got list",
    ])


def test_gold_outside_the_label_set_names_the_question(lamp):
    result = read_lamp(*lamp("LaMP_2"), LabelTask(labels=["sci-fi", "comedy", "violence", "classic"]))
    assert [u.user_id for u in result.users] == ["110", "111"]
    assert [(p.field, p.message.split(" is ")[0]) for p in result.problems] == [
        ("2.profile.0.tag", "'fantasy'"), ("2.output (gold)", "'fantasy'")]


def test_unknown_task_is_a_data_error(lamp, tmp_path):
    questions, _ = lamp("LaMP_2")
    (tmp_path / "o.json").write_text(json.dumps({"task": "LaMP_9", "golds": []}))
    with pytest.raises(DataError, match="task 'LaMP_9' is not one of LaMP_1"):
        read_lamp(questions, tmp_path / "o.json")


# ------------------------------------------------------------------ LaMP's real layouts, as published

from prime_ray.data.examples import build_examples  # noqa: E402
from prime_ray.data.sources import load_source  # noqa: E402
from prime_ray.spec import DataSpec, LampSource  # noqa: E402

INSTRUCTION = "Which tag does this movie relate to among the following tags? Just answer with the tag name. description: "
MOVIES = {  # profile entry id -> (description, tag)
    "m1": ("A crew answers a distress call and meets a deadly creature.", "sci-fi"),
    "m2": ("A hacker learns the world is a simulation.", "sci-fi"),
    "m3": ("A weatherman relives the same day again and again.", "comedy"),
    "m4": ("A shark terrorizes a small beach town.", "violence"),
    "m5": ("A girl is swept away by a tornado to a magical land.", "fantasy"),
    "m6": ("Two detectives hunt a killer who uses the seven deadly sins.", "violence"),
    "m7": ("A boy befriends a stranded alien and helps it get home.", "classic"),
}


def _entry(mid):
    description, tag = MOVIES[mid]
    return {"id": mid, "description": description, "tag": tag}


def _question(qid, query_mid, profile_mids, user_id=None):
    """A LaMP-2 question whose query is movie `query_mid`; its profile may hold the person's other queries."""
    question = {"id": qid, "input": INSTRUCTION + MOVIES[query_mid][0], "profile": [_entry(m) for m in profile_mids]}
    return question if user_id is None else {**question, "user_id": user_id}


def _five_questions(with_user_id):
    """Five questions of two people, shaped like LaMP-2's time-based split: a person's later questions
    carry their earlier questions' movies, with the tag, in their profiles."""
    uid = (lambda u: u) if with_user_id else (lambda u: None)
    return [
        _question("q1", "m3", ["m1", "m2"], uid("ann")),
        _question("q2", "m4", ["m1", "m2", "m3"], uid("ann")),       # holds q1's movie m3, tagged
        _question("q3", "m5", ["m1", "m2", "m3", "m4"], uid("ann")),  # holds q1's and q2's
        _question("q4", "m6", ["m2"], uid("bob")),
        _question("q5", "m7", ["m2", "m6"], uid("bob")),              # holds q4's movie m6
    ]


def _golds(questions):
    mid_of = {q["id"]: next(m for m, (d, _) in MOVIES.items() if q["input"].endswith(d)) for q in questions}
    return {"task": "LaMP_2", "golds": [{"id": q["id"], "output": MOVIES[mid_of[q["id"]]][1]} for q in questions]}


def _files(tmp_path, questions, golds=None):
    (tmp_path / "q.json").write_text(json.dumps(questions))
    if golds is None:
        return str(tmp_path / "q.json"), None
    (tmp_path / "o.json").write_text(json.dumps(golds))
    return str(tmp_path / "q.json"), str(tmp_path / "o.json")


def test_questions_with_user_id_are_grouped_into_their_people_without_leakage(tmp_path):
    questions = _five_questions(with_user_id=True)
    q, o = _files(tmp_path, questions, _golds(questions))
    result = load_source(LampSource(questions=q, outputs=o))

    assert [u.user_id for u in result.users] == ["ann", "bob"]
    ann, bob = result.users
    assert [x.id for x in ann.queries] == ["q1", "q2", "q3"] and [x.output for x in ann.queries] == ["comedy", "violence", "fantasy"]
    # the union of ann's profiles is m1..m4; m3 and m4 are her own queries (q1, q2), so they leave the history
    assert [i.id for i in ann.history] == ["m1", "m2"]
    assert [x.id for x in bob.queries] == ["q4", "q5"] and [i.id for i in bob.history] == ["m2"]  # m6 is q4's query
    assert result.leaks == 3 and len(result.problems) == 3
    assert {p.field for p in result.problems} == {"history.1.input", "history.2.input", "history.3.input"}
    assert result.notes == []  # question ids are grouped by user_id: no caveat to print

    built = build_examples(result.users, DataSpec.model_validate(
        {"source": {"format": "lamp", "questions": q, "outputs": o}, "task": {"kind": "text"}}), seed=0)
    held_out = {e.input for e in built.examples if e.split != "train"}
    assert held_out and not held_out & {e.input for e in built.examples if e.split == "train"}


def test_questions_without_user_id_are_users_of_their_own_and_leaks_are_removed(tmp_path):
    questions = _five_questions(with_user_id=False)
    q, o = _files(tmp_path, questions, _golds(questions))
    result = load_source(LampSource(questions=q, outputs=o))

    assert [u.user_id for u in result.users] == ["q1", "q2", "q3", "q4", "q5"]
    histories = {u.user_id: [i.id for i in u.history] for u in result.users}
    # every profile entry that is another question's query (m3 of q1, m4 of q2, m6 of q4) is removed
    assert histories == {"q1": ["m1", "m2"], "q2": ["m1", "m2"], "q3": ["m1", "m2"], "q4": ["m2"], "q5": ["m2"]}
    assert result.leaks == 4  # q2: m3; q3: m3, m4; q5: m6
    assert "question ids are not user ids" in result.notes[0]
    first = next(p for p in result.problems if "'q2'" in p.message and "'m3'" in p.message)
    assert first.field == "history.2.input" and "query of user 'q1'" in first.message


def test_the_envelope_layout_is_unwrapped_and_a_test_split_has_unlabelled_queries(tmp_path):
    email = "Generate a subject for the following email: "
    questions = [
        {"id": "60", "input": email + "Please find the budget attached.", "profile": [
            {"id": "600", "text": "The meeting moved to Friday.", "title": "Meeting moved"},
            {"id": "601", "text": "Lunch is on me today.", "title": "Lunch"}]},
        {"id": "61", "input": email + "Can we talk about the launch?", "profile": [
            {"id": "610", "text": "Server maintenance tonight.", "title": "Maintenance"}]},
    ]
    envelope = tmp_path / "test_questions.json"
    envelope.write_text(json.dumps({"task": "LaMP_6", "golds": questions}))
    result = read_lamp(envelope)  # no outputs: LaMP's test split ships without them

    assert result.problems == []
    assert [u.user_id for u in result.users] == ["60", "61"]
    first = result.users[0]
    assert [(i.input, i.output) for i in first.history] == [
        ("The meeting moved to Friday.", "Meeting moved"), ("Lunch is on me today.", "Lunch")]
    assert [(x.id, x.input, x.output) for x in first.queries] == [("60", "Please find the budget attached.", None)]
    assert "2 question(s) without a gold output" in result.notes[-1]

    built = build_examples(result.users, DataSpec.model_validate(
        {"source": {"format": "lamp", "questions": str(envelope)}, "task": {"kind": "text"},
         "split": {"held_out_users": 0.5}}), seed=0)
    assert built.count("test_query") == built.count("test_user") == 0  # nothing to score
    assert built.count("train") in (1, 2) and built.unlabelled_queries == 2  # profiles still train and serve as memory


def test_a_bare_test_split_infers_its_task_from_fields_and_marker(tmp_path):
    article = "Generate a headline for the following article: "
    questions = [{"id": "40", "input": article + "Council votes for bike lanes.",
                  "profile": [{"id": "400", "text": "New bus routes reach the suburbs.", "title": "Buses Reach Suburbs"}]}]
    q, _ = _files(tmp_path, questions)
    result = read_lamp(q)
    (user,) = result.users
    assert user.queries[0].input == "Council votes for bike lanes."  # LaMP_4's marker, so LaMP_4's fields
    assert user.history[0].output == "Buses Reach Suburbs"

    ambiguous = [{"id": "1", "input": "no marker at all", "profile": [{"id": "10", "text": "x", "title": "y"}]}]
    q, _ = _files(tmp_path, ambiguous)
    with pytest.raises(DataError, match="cannot tell which LaMP task"):
        read_lamp(q)


def test_problems_name_lamp_s_own_fields(tmp_path):
    questions = [
        {"id": "30", "input": "What is the score of this review? review: Great blender.",
         "profile": [{"id": "300", "text": "Loud.", "score": "2"}, {"id": "301", "text": "", "score": "5"},
                     {"id": "302", "text": "Fine.", "score": "3", "date": "2015-06-30"}]},
        {"id": "31", "input": "What is the score of this review? review: Broke in a week.",
         "profile": [{"id": "310", "text": "Works.", "score": "4"}]},
    ]
    q, o = _files(tmp_path, questions, {"task": "LaMP_3", "golds": [{"id": "30", "output": "5"}, {"id": "31", "output": "1"}]})
    result = read_lamp(q, o)
    assert [str(p).removeprefix(f"{q}: ") for p in result.problems] == ["0.profile.1.text: must not be empty"]
    assert [u.user_id for u in result.users] == ["31"]


def test_a_byte_order_mark_and_a_latin_1_byte_in_lamp_files(tmp_path):
    questions = _five_questions(with_user_id=True)
    questions[3]["profile"][0]["description"] = "Caf\udce9 society."  # stands for the byte 0xE9, written below
    text = json.dumps(questions, ensure_ascii=False).encode("utf-8", errors="surrogateescape")
    (tmp_path / "q.json").write_bytes(b"\xef\xbb\xbf" + text)
    (tmp_path / "o.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(_golds(_five_questions(True))).encode())
    result = read_lamp(tmp_path / "q.json", tmp_path / "o.json")
    assert [str(p).removeprefix(f"{tmp_path / 'q.json'}: ") for p in result.problems] == [
        "3.profile.0.description: not valid UTF-8 (byte 0xE9)"]
    assert [u.user_id for u in result.users] == ["ann", "bob"]  # bob keeps q5; q4 alone is skipped
    assert [x.id for x in result.users[1].queries] == ["q5"]
