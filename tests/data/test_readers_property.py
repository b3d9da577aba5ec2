"""Any input to the threads and LaMP readers: users, located problems, or DataError; never another exception."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prime_ray.data.adapters.lamp import read_lamp
from prime_ray.data.adapters.threads import read_threads
from prime_ray.data.store import write_users
from prime_ray.data.validation import DataError, Problem

_text = st.text(st.characters(codec=None), max_size=6) | st.sampled_from(["[deleted]", "&amp;amp;", "", "a/b"])
_scalar = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | _text
_reply = st.fixed_dictionaries({"text": _text | _scalar}, optional={"persuasive": st.booleans() | _scalar, "id": _scalar})
_thread = st.fixed_dictionaries(
    {"id": _text, "post": _text, "replies": st.lists(_reply, max_size=4) | _scalar},
    optional={"timestamp": _scalar},
)
_author = st.fixed_dictionaries(
    {"author": _text | _scalar},
    optional={"threads": st.lists(_thread | _scalar, max_size=3), "queries": st.lists(_thread, max_size=2),
              "profile": st.dictionaries(_text, _scalar, max_size=2) | _scalar},
)
_entry = st.dictionaries(st.sampled_from(["id", "text", "title", "score", "date", "description", "tag"]),
                         _scalar, max_size=5)
_question = st.fixed_dictionaries(
    {"id": _scalar, "input": _scalar, "profile": st.lists(_entry | _scalar, max_size=3) | _scalar},
    optional={"user_id": _scalar},
)

_settings = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(result, path, tmp_path):
    for problem in result.problems:
        assert isinstance(problem, Problem) and problem.message
        assert problem.file in (str(path), str(tmp_path / "o.json"))
    write_users(tmp_path / "users.parquet", result.users, {u.user_id: "train" for u in result.users})


@_settings
@given(authors=st.lists(_author | _scalar, max_size=3), garbage=st.binary(max_size=20))
def test_threads_reader_on_any_document(tmp_path, authors, garbage):
    path = tmp_path / "threads.jsonl"
    path.write_bytes(b"\n".join(json.dumps(a).encode("utf-8", "surrogatepass") for a in authors) + b"\n" + garbage)
    _check(read_threads(path), path, tmp_path)


@_settings
@given(questions=st.lists(_question | _scalar, max_size=3) | _scalar,
       envelope=st.booleans(), task=st.sampled_from(["LaMP_1", "LaMP_2", "LaMP_3", "LaMP_7", "LaMP_9", None]),
       golds=st.lists(st.fixed_dictionaries({}, optional={"id": _scalar, "output": _scalar}) | _scalar, max_size=3))
def test_lamp_reader_on_any_document(tmp_path, questions, envelope, task, golds):
    path = tmp_path / "q.json"
    document = {"task": task, "golds": questions} if envelope else questions
    path.write_bytes(json.dumps(document).encode("utf-8", "surrogatepass"))
    outputs = None
    if task is not None and not envelope:
        outputs = tmp_path / "o.json"
        outputs.write_text(json.dumps({"task": task, "golds": golds}))
    try:
        result = read_lamp(path, outputs)
    except DataError:
        return
    _check(result, path, tmp_path)
