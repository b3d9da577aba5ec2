"""The eval stage's pieces that need no cluster: example selection, outcomes, ranking by scores,
and the example specs. (The stage itself runs on Ray in tests/e2e/test_end_to_end.py.)"""

from pathlib import Path

import pytest

from prime_ray.data.schema import Example
from prime_ray.engine.base import Generation
from prime_ray.evaluation.answering import (
    MODES,
    AnswerConfig,
    AnswerUser,
    Generated,
    answer_outcome,
    plan_modes,
    select_examples,
)
from prime_ray.spec import EvalMode, PromptMode, RankingTask, RatingTask, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(i: int, split: str, output: str = "4", candidates=None) -> Example:
    return Example(example_id=f"u{i % 3}/m{i}", user_id=f"u{i % 3}", split=split, input=f"Movie {i}",
                   output=output, candidates=candidates, memory_ids=[])


def test_every_mode_has_a_model_and_a_prompt_mode():
    assert set(MODES) == set(EvalMode)
    assert MODES[EvalMode.prime_personal_think] == ("prime", PromptMode.personal_think)
    assert MODES[EvalMode.fast_think] == ("fast", PromptMode.think)


def test_modes_of_a_student_without_an_adapter_are_skipped_with_the_reason(tmp_path):
    (tmp_path / "prime").mkdir()
    adapters = {"prime": tmp_path / "prime", "fast": tmp_path / "fast"}
    base = {"name": "j", "data": {"source": {"format": "jsonl", "path": "u.jsonl"}, "task": {"kind": "rating"}}}
    modes, skipped = plan_modes(parse_spec(base), adapters)
    assert [m.value for m in modes] == ["generalist-direct", "generalist-personal-direct", "generalist-think",
                                        "generalist-personal-think", "prime-direct", "prime-personal-direct",
                                        "prime-personal-think"]
    assert set(skipped) == {"fast-direct", "fast-personal-direct", "fast-think"} and "fast_thinking_baseline is false" in skipped["fast-think"]
    trained = parse_spec({**base, "train": {"fast_thinking_baseline": True}, "eval": {"modes": ["fast-direct"]}})
    assert plan_modes(trained, adapters) == ([], {"fast-direct": f"no fast adapter at {tmp_path / 'fast'}"})


def test_select_is_seeded_per_split_and_bounded():
    examples = [_example(i, "test_query") for i in range(10)] + [_example(i, "test_user") for i in range(10, 13)]
    first = select_examples(examples, ["test_query", "test_user"], 4, seed=1)
    assert [len(first["test_query"]), len(first["test_user"])] == [4, 3]
    assert first == select_examples(list(reversed(examples)), ["test_query", "test_user"], 4, seed=1)
    assert {e.split for e in first["test_query"]} == {"test_query"}
    assert select_examples(examples, ["test_query"], None, seed=1)["test_query"] == sorted(
        examples[:10], key=lambda e: e.example_id)


def test_outcome_measures_whatever_a_think_mode_wrote():
    task = RatingTask()
    looping = Generated("u0/m0", "the user the user the user likes it. Answer: 5", 12, "stop", None)
    think, parsed = answer_outcome(_example(0, "test_query"), PromptMode.think, looping, task)
    assert think.predicted == "5" and parsed.ok
    assert think.trace == "the user the user the user likes it."  # no think block: all before the answer line
    direct, _ = answer_outcome(_example(0, "test_query"), PromptMode.direct, looping, task)
    assert direct.trace is None
    at_once = Generated("u0/m0", "Answer: 5", 3, "stop", None)
    assert answer_outcome(_example(0, "test_query"), PromptMode.think, at_once, task)[0].trace == ""
    blocked = Generated("u0/m0", "<think>\nliked dramas\n</think>\nAnswer: 4", 9, "stop", None)
    assert answer_outcome(_example(0, "test_query"), PromptMode.personal_think, blocked, task)[0].trace == "liked dramas"


class _FakeGeneralist:
    """Stands in for the Serve handle: fixed texts, candidate scores from a table."""

    def __init__(self, text: str, scores: dict[str, float]):
        self.text, self.table, self.scored = text, scores, []

    def generate(self, prompts, params, adapter=None):
        self.prompts = list(prompts)
        return [Generation(self.text, 10, 5, "stop") for _ in prompts]

    def score(self, prompts, continuations, adapter=None):
        self.scored += continuations
        return [self.table[c.rsplit("Answer: ", 1)[1]] for c in continuations]


def test_ranking_scores_candidates_after_the_models_own_trace():
    task = RankingTask(hit_k=[1, 2])
    candidates = ["keep calm", "go home", "stay late"]
    fake = _FakeGeneralist("<think>\nshe leaves early\n</think>\nAnswer: go home",
                           {"keep calm": -1.0, "go home": -2.0, "stay late": -0.5})
    worker = AnswerUser(fake, AnswerConfig(task=task, max_new_tokens=8))
    [row] = worker([{"user_id": "u0", "example_id": "u0/m0", "prompt": "p", "candidates": candidates}])
    assert fake.scored[0].startswith("<think>\nshe leaves early\n</think>")
    gen = Generated(**row)
    # parsed "go home" is rank 1, then by score: "stay late" (-0.5), "keep calm" (-1.0)
    outcome, _ = answer_outcome(_example(0, "test_user", "keep calm", candidates), PromptMode.think, gen, task)
    assert outcome.gold_rank == 3
    unparsed = AnswerUser(_FakeGeneralist("no idea", {}), AnswerConfig(task=task, max_new_tokens=8))
    [row] = unparsed([{"user_id": "u0", "example_id": "u0/m0", "prompt": "p", "candidates": candidates}])
    assert row["scores"] is None
    assert answer_outcome(_example(0, "test_user", "keep calm", candidates), PromptMode.think,
                    Generated(**row), task)[0].gold_rank is None


def test_think_modes_generate_from_inside_the_think_block():
    task = RatingTask()
    fake = _FakeGeneralist("they like dramas\n</think>\nAnswer: 4", {})
    worker = AnswerUser(fake, AnswerConfig(task=task, max_new_tokens=8))
    [row] = worker([{"user_id": "u0", "example_id": "u0/m0", "prompt": "p", "prefix": "<think>\n", "candidates": None}])
    assert fake.prompts == ["p<think>\n"] and row["text"].startswith("<think>\nthey like")
    outcome, parsed = answer_outcome(_example(0, "test_query"), PromptMode.personal_think, Generated(**row), task)
    assert (outcome.trace, outcome.predicted, outcome.strict) == ("they like dramas", "4", True)
    # asked to think, closed the block at once: an empty trace, measured as 0 words
    fake.text = "</think>\n4"
    [row] = worker([{"user_id": "u0", "example_id": "u0/m0", "prompt": "p", "prefix": "<think>\n", "candidates": None}])
    outcome, _ = answer_outcome(_example(0, "test_query"), PromptMode.think, Generated(**row), task)
    assert (outcome.trace, outcome.predicted, outcome.strict) == ("", "4", False)  # found by the fallback


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_specs_are_valid(path):
    spec = load_spec(path)
    assert spec.name


def test_the_demo_spec_trains_both_students_on_the_packaged_model():
    spec = load_spec(EXAMPLES / "movielens-rating.yaml")
    assert spec.model.name_or_path == "smollm2-135m-instruct"
    assert spec.train.fast_thinking_baseline and set(spec.eval.modes) == set(EvalMode)
