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
    outputs["golds"] = [g for g in outputs["golds"] if g["id"] != "112"] + [{"id": "9"}]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "o.json").write_text(json.dumps(outputs))
    result = read_lamp(tmp_path / "q.json", tmp_path / "o.json")
    assert result.users == []
    assert sorted(str(p) for p in result.problems) == sorted([
        f"{tmp_path / 'o.json'}: golds.2: expected {{\"id\": string, \"output\": string}}",
        f"{tmp_path / 'q.json'}: 0.profile.1.tag: field required",
        f"{tmp_path / 'q.json'}: 1.profile.0.date: expected YYYY-MM-DD or a year, got 'last week'",
        f"{tmp_path / 'q.json'}: 2.id: no gold output for question '112' in the outputs file",
    ])


def test_gold_outside_the_label_set_names_the_question(lamp):
    result = read_lamp(*lamp("LaMP_2"), LabelTask(labels=["sci-fi", "comedy", "violence", "classic"]))
    assert [u.user_id for u in result.users] == ["110", "111"]
    assert [(p.field, p.message.split(" is ")[0]) for p in result.problems] == [
        ("2.profile.0.output", "'fantasy'"), ("2.output (gold)", "'fantasy'")]


def test_unknown_task_is_a_data_error(lamp, tmp_path):
    questions, _ = lamp("LaMP_2")
    (tmp_path / "o.json").write_text(json.dumps({"task": "LaMP_9", "golds": []}))
    with pytest.raises(DataError, match="task 'LaMP_9' is not one of LaMP_1"):
        read_lamp(questions, tmp_path / "o.json")
