"""A finished job's students answering in-process: adapters chosen per request on one base model,
the job's memory recalled with the job's retriever, appended history persisted, and every bad input
answered with its status and the field at fault."""

from __future__ import annotations

import json

import pytest

from prime_ray.serving.memory import ServingMemory
from prime_ray.serving.schemas import HistoryAppend, HistoryItemIn, PredictRequest
from prime_ray.serving.student import NotFoundError, ServedStudent, ServingError
from prime_ray.spec import load_spec


@pytest.fixture(scope="module")
def student(served_job):
    s = ServedStudent.load(served_job, device="cpu")
    yield s
    s.close()


def _known_user(student) -> str:
    return next(iter(student.memory.users))


def test_a_known_user_gets_the_prime_students_personal_think_answer_with_the_memory_it_used(student):
    user = _known_user(student)
    history = student.memory.users[user].history
    query = history[0].input  # shares its words with that history item: BM25 ranks it first
    [p] = student.predict([PredictRequest(user_id=user, input=query)])
    assert p.adapter == "prime" and p.mode == "personal-think" and p.job_id == "served"
    assert p.profile == f"{user} likes thrillers and dislikes musicals."
    assert len(p.episodes) == 2 and p.episodes[0].id == history[0].id
    assert p.prompt_tokens > 0 and 0 < p.completion_tokens <= 12
    assert p.answer is None or p.answer in {"1", "2", "3", "4", "5"}
    assert (p.answer is None) == (p.parse_error is not None)


def test_adapters_are_selected_per_request_in_one_batch_on_one_model(student):
    user = _known_user(student)
    requests = [PredictRequest(user_id=user, input="Heat (1995) | Action", adapter=a, mode="personal-think")
                for a in ("prime", "fast", "generalist", "prime")]
    texts = [p.text for p in student.predict(requests)]
    assert texts[0] == texts[3]  # greedy: the same adapter gives the same text in one batch
    assert len({texts[0], texts[1], texts[2]}) == 3  # each adapter (and none) answers differently
    # The generalist alone gives the same text as the generalist in a mixed batch.
    prepared = student.prepare(requests[2])
    assert student.generate_with("generalist", [prepared.prompt], prepared.params)[0].text == texts[2]


def test_a_new_user_brings_their_history_inline(student):
    history = [HistoryItemIn(input="Alien (1979) | Horror", output="5"), HistoryItemIn(input="Babe (1995) | Family", output="1")]
    [p] = student.predict([PredictRequest(user_id="someone-new", input="Aliens (1986) | Horror", history=history)])
    assert [e.input for e in p.episodes] == ["Alien (1979) | Horror", "Babe (1995) | Family"]
    assert p.profile is None and p.user_id == "someone-new"


def test_bad_inputs_name_what_is_wrong(student):
    with pytest.raises(NotFoundError, match="no user 'nobody'") as e:
        student.prepare(PredictRequest(user_id="nobody", input="x"))
    assert e.value.status == 404 and e.value.problems[0].path == "user_id"
    with pytest.raises(NotFoundError, match="no adapter 'slow'; known: prime, fast, generalist") as e:
        student.prepare(PredictRequest(user_id=_known_user(student), input="x", adapter="slow"))
    assert e.value.status == 404
    with pytest.raises(ServingError, match=f"context of {student.context_tokens} tokens") as e:
        student.prepare(PredictRequest(user_id=_known_user(student), input="word " * 5000))
    assert e.value.status == 422 and e.value.problems[0].path == "input"
    with pytest.raises(ServingError, match="unknown mode 'ponder'"):
        student.prepare(PredictRequest(user_id=_known_user(student), input="x", mode="ponder"))
    dup = [HistoryItemIn(id="a", input="x", output="1"), HistoryItemIn(id="a", input="y", output="2")]
    with pytest.raises(ServingError) as e:
        student.prepare(PredictRequest(user_id="new", input="x", history=dup))
    assert e.value.problems[0].path == "history.1.id"


def test_appended_history_is_retrieved_next_and_survives_a_reload(student, served_job):
    user = sorted(student.memory.users)[-1]
    query = "Zardoz (1974) | Sci-Fi Fantasy Oddity"
    before = student.prepare(PredictRequest(user_id=user, input=query)).episodes
    added = student.append_history(user, HistoryAppend(items=[
        HistoryItemIn(input="Zardoz (1974) | Sci-Fi Fantasy Oddity", output="1"),
        HistoryItemIn(id="z2", input="Oddity Fantasy revisited", output="2")]))
    assert added.added[1] == "z2" and added.added[0].startswith("added-")
    assert added.history_items == len(student.memory.users[user].history) + 2
    after = student.prepare(PredictRequest(user_id=user, input=query)).episodes
    assert [e.id for e in after] == added.added and [e.id for e in before] != added.added

    # A fresh memory (another replica, a redeploy) reads the appended items from the job's folder.
    again = ServingMemory(served_job, load_spec(served_job / "spec.json"))
    assert [i.id for i in again.recall(user, query).episodes] == added.added
    with pytest.raises(ServingError, match="already has a history item 'z2'"):
        student.append_history(user, HistoryAppend(items=[HistoryItemIn(id="z2", input="x", output="1")]))

    refreshed = student.append_history(user, HistoryAppend(items=[HistoryItemIn(input="Q", output="3")],
                                                           refresh_profile=True))
    assert refreshed.profile is not None and refreshed.profile != f"{user} likes thrillers and dislikes musicals."
    files = list((served_job / "serving" / "memory").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["profile"] == refreshed.profile
    assert student.prepare(PredictRequest(user_id=user, input=query)).profile == refreshed.profile
