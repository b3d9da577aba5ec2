"""AnswerUser's budget forcing in think modes, and how forced answers are recorded and reported.

The generalist is scripted (a fixed output per prompt, every call recorded): the thing under test is
what AnswerUser asks it and how the answers are read. One test runs the real tiny model.
"""

import json

import pytest
import torch

from prime_ray.data.schema import Example
from prime_ray.engine import SamplingParams, create_engine
from prime_ray.engine.base import Generation
from prime_ray.evaluation.answering import (
    MODES,
    AnswerConfig,
    AnswerUser,
    Generated,
    answer_outcome,
    needs_forcing,
    own_thinking,
    prediction_record,
)
from prime_ray.evaluation.report import Report, render_markdown, summarize_mode
from prime_ray.models.parser import parse_output
from prime_ray.models.prompts import answer_prefix, generation_prefix, render_prompt
from prime_ray.spec import EvalMode, ModelSpec, PromptMode, PromptTemplates, RankingTask, RatingTask

RATING = RatingTask()
THINK = EvalMode.generalist_personal_think
DIRECT = EvalMode.generalist_personal_direct
# what a forced answer is decoded with: greedy, the rating kind's answer budget, the job's seed
FORCED = SamplingParams(max_new_tokens=8, temperature=0.0, seed=7)


class ScriptedGeneralist:
    """Stands in for the Serve handle: a fixed (text, completion tokens, finish reason) per prompt."""

    def __init__(self, outputs: dict[str, tuple[str, int, str]], scores: dict[str, float] | None = None):
        self.outputs, self.table = outputs, scores or {}
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self.adapters: list[str | None] = []  # the adapter of each generate and score call
        self.scored: list[str] = []

    def generate(self, prompts, params, adapter=None):
        self.calls.append((list(prompts), params))
        self.adapters.append(adapter)
        return [Generation(text, 10, tokens, finish) for text, tokens, finish in (self.outputs[p] for p in prompts)]

    def score(self, prompts, continuations, adapter=None):
        self.adapters.append(adapter)
        self.scored += continuations
        return [self.table[c.rsplit("Answer: ", 1)[1]] for c in continuations]


def _row(mode: EvalMode, user: str = "u0", candidates=None) -> dict:
    return {"user_id": user, "example_id": f"{user}/q", "prompt": f"P-{user}-{mode.value}|", "mode": mode.value,
            "prefix": generation_prefix(MODES[mode][1]), "candidates": candidates}


def _example(user: str = "u0", output: str = "4", candidates=None) -> Example:
    return Example(example_id=f"{user}/q", user_id=user, split="test_query", input="Heat (1995)", output=output,
                   candidates=candidates, memory_ids=[])


def _worker(g, **config) -> AnswerUser:
    return AnswerUser(g, AnswerConfig(**{"task": RATING, "max_new_tokens": 96, "temperature": 0.5, "seed": 7,
                                         **config}))


def test_a_think_row_cut_off_at_the_limit_gets_its_answer_forced():
    think = _row(THINK)["prompt"] + "<think>\n"
    forced_prompt = think + "they like slow dramas and\n</think>\nAnswer:"
    g = ScriptedGeneralist({think: ("they like slow dramas and", 96, "length"), forced_prompt: (" 4\n", 2, "stop")})
    [row] = _worker(g)([_row(THINK)])
    assert g.calls == [([think], SamplingParams(max_new_tokens=96, temperature=0.5, seed=7)), ([forced_prompt], FORCED)]
    assert (row["forced"], row["forced_text"], row["completion_tokens"]) == (True, " 4\n", 96 + 2)
    # the text is the model's own output, cut off as it was
    assert (row["text"], row["finish_reason"]) == ("<think>\nthey like slow dramas and", "length")

    record, outcome = prediction_record(THINK, "test_query", _example(), Generated(**row), RATING)
    assert (record["predicted"], record["strict"], record["forced"], record["forced_text"]) == ("4", False, True, " 4\n")
    assert record["parse_error"] is None and record["completion_tokens"] == 98
    # the trace is the thinking before forcing, not the forced completion
    assert (outcome.trace, outcome.predicted, outcome.strict, outcome.forced) == ("they like slow dramas and", "4",
                                                                                  False, True)
    json.dumps(record)  # one line of predictions.jsonl


@pytest.mark.parametrize(("own", "finish", "thinking"), [
    ("they like it and", "stop", "they like it and"),  # stopped inside the think block
    ("they like it\n</think>\n", "stop", "they like it"),  # closed the block, wrote no answer
    ("they like it.\nAns", "length", "they like it."),  # the limit cut the answer marker: cut before it
    ("they like it.\n**Answer", "length", "they like it."),
    ("they like it\nAnswer: I would say", "length", "they like it"),  # the limit cut the answer line
    ("", "stop", ""),  # nothing at all: an empty think block
])
def test_what_is_forced_and_from_which_thinking(own, finish, thinking):
    think = _row(THINK)["prompt"] + "<think>\n"
    forced_prompt = think + f"{thinking}\n</think>\nAnswer:"
    assert forced_prompt == _row(THINK)["prompt"] + answer_prefix(thinking)
    g = ScriptedGeneralist({think: (own, 5, finish), forced_prompt: (" 3", 1, "stop")})
    [row] = _worker(g)([_row(THINK)])
    assert g.calls[1:] == [([forced_prompt], FORCED)]
    outcome, _ = answer_outcome(_example(), PromptMode.personal_think, Generated(**row), RATING)
    assert (outcome.predicted, outcome.trace, outcome.strict, outcome.forced) == ("3", thinking, False, True)


@pytest.mark.parametrize(("own", "finish", "strict", "predicted"), [
    ("they like dramas\n</think>\nAnswer: 5", "stop", True, "5"),
    ("they like dramas\nAnswer: 5 because they", "length", True, "5"),  # cut off after its answer
    ("they like dramas\n</think>\nI say 5", "stop", False, "5"),  # the parser's fallback found it
    ("they like dramas\nAnswer: maybe", "stop", False, None),  # a whole answer line of its own, unreadable
])
def test_a_think_row_with_an_answer_line_or_answer_of_its_own_is_not_forced(own, finish, strict, predicted):
    think = _row(THINK)["prompt"] + "<think>\n"
    g = ScriptedGeneralist({think: (own, 9, finish)})
    [row] = _worker(g)([_row(THINK)])
    assert len(g.calls) == 1 and not row["forced"] and row["forced_text"] is None and row["completion_tokens"] == 9
    record, outcome = prediction_record(THINK, "test_query", _example(), Generated(**row), RATING)
    assert (record["predicted"], record["strict"], record["forced"]) == (predicted, strict, False)
    assert outcome.trace == "they like dramas" and outcome.forced is False


def test_direct_rows_are_never_forced():
    direct, think = _row(DIRECT), _row(THINK)
    forced_prompt = think["prompt"] + "<think>\nhmm\n</think>\nAnswer:"
    g = ScriptedGeneralist({direct["prompt"]: ("I do not know what", 96, "length"),
                            think["prompt"] + "<think>\n": ("hmm", 96, "length"), forced_prompt: (" 2", 1, "stop")})
    rows = _worker(g)([direct, think])
    assert [prompts for prompts, params in g.calls if params == FORCED] == [[forced_prompt]]
    assert [r["forced"] for r in rows] == [False, True]
    outcome, parsed = answer_outcome(_example(), PromptMode.personal_direct, Generated(**rows[0]), RATING)
    assert outcome.predicted is None and outcome.forced is None and not parsed.ok  # a parse failure, as before


def test_the_rows_of_several_users_are_forced_in_one_call():
    users = ["u0", "u1", "u2"]
    outputs = {}
    for i, user in enumerate(users):
        outputs[_row(DIRECT, user)["prompt"]] = ("Answer: 4", 3, "stop")
        outputs[_row(THINK, user)["prompt"] + "<think>\n"] = (f"user {i} likes", 96, "length")
        outputs[_row(THINK, user)["prompt"] + f"<think>\nuser {i} likes\n</think>\nAnswer:"] = (f" {i + 1}", 1, "stop")
    g = ScriptedGeneralist(outputs)
    rows = _worker(g)([_row(mode, user) for user in users for mode in (DIRECT, THINK)])
    forced_calls = [prompts for prompts, params in g.calls if params == FORCED]
    assert forced_calls == [[_row(THINK, u)["prompt"] + f"<think>\nuser {i} likes\n</think>\nAnswer:"
                             for i, u in enumerate(users)]]
    assert [(r["user_id"], r["forced"], r["forced_text"]) for r in rows] == [
        ("u0", False, None), ("u0", True, " 1"), ("u1", False, None), ("u1", True, " 2"),
        ("u2", False, None), ("u2", True, " 3")]


def _mixed(users):
    """Each user's direct and think rows, the think ones answering on their own."""
    outputs = {}
    for user in users:
        outputs[_row(DIRECT, user)["prompt"]] = ("Answer: 4", 3, "stop")
        outputs[_row(THINK, user)["prompt"] + "<think>\n"] = ("they like it\n</think>\nAnswer: 5", 9, "stop")
    return [_row(mode, user) for user in users for mode in (DIRECT, THINK)], outputs


def test_direct_rows_decode_with_the_answer_budget_and_think_rows_with_max_new_tokens():
    rows, outputs = _mixed(["u0", "u1"])
    g = ScriptedGeneralist(outputs)
    out = _worker(g)(rows)
    direct = [r["prompt"] for r in rows if r["mode"] == DIRECT.value]
    think = [r["prompt"] + "<think>\n" for r in rows if r["mode"] == THINK.value]
    # one call each; the rating kind's answer budget is 8 tokens, eval.max_new_tokens 96
    assert g.calls == [(direct, SamplingParams(max_new_tokens=8, temperature=0.5, seed=7)),
                       (think, SamplingParams(max_new_tokens=96, temperature=0.5, seed=7))]
    assert [(r["example_id"], r["mode"], r["text"]) for r in out] == [
        (r["example_id"], r["mode"], r["prefix"] + outputs[r["prompt"] + r["prefix"]][0]) for r in rows]
    # a budget below the answer budget bounds direct rows too; the direct rows still go first
    g = ScriptedGeneralist(outputs)
    _worker(g, max_new_tokens=4)(rows)
    assert [(prompts, params.max_new_tokens) for prompts, params in g.calls] == [(direct, 4), (think, 4)]
    # a call without think rows sends one call
    g = ScriptedGeneralist(outputs)
    _worker(g)([r for r in rows if r["mode"] == DIRECT.value])
    assert len(g.calls) == 1


class GroupingGeneralist(ScriptedGeneralist):
    """A generalist that takes several generate calls at once, as the Serve handle does."""

    def __init__(self, outputs):
        super().__init__(outputs)
        self.grouped: list[list[tuple[list[str], SamplingParams, str | None]]] = []

    def generate_groups(self, groups):
        self.grouped.append([(list(prompts), params, adapter) for prompts, params, adapter in groups])
        return [[Generation(self.outputs[p][0], 10, self.outputs[p][1], self.outputs[p][2]) for p in prompts]
                for prompts, _, _ in groups]


def test_a_generalist_that_takes_groups_gets_every_models_direct_rows_at_once_then_their_think_rows():
    """Each think prompt extends its example's direct prompt: sent after them, it finds them in the
    engine's prefix cache."""
    rows, outputs = _mixed(["u0", "u1"])
    rows += [r | {"adapter": "prime"} for r in rows]
    g = GroupingGeneralist(outputs)
    out = _worker(g)(rows)
    assert g.calls == [] and [[(params.max_new_tokens, adapter) for _, params, adapter in group]
                              for group in g.grouped] == [[(8, None), (8, "prime")], [(96, None), (96, "prime")]]
    assert [r["text"] for r in out] == [r["prefix"] + outputs[r["prompt"] + r["prefix"]][0] for r in rows]


def test_each_row_is_answered_scored_and_forced_by_its_own_models_adapter():
    task = RankingTask(hit_k=[1])
    candidates = ["go home", "stay late"]
    rows = [_row(mode, candidates=candidates) | {"adapter": adapter, "prompt": f"P-{adapter}|"}
            for mode, adapter in [(DIRECT, None), (THINK, "prime"), (DIRECT, "prime"), (DIRECT, "fast")]]
    think = "P-prime|<think>\n"
    forced = think + "she leaves early\n</think>\nAnswer:"
    g = ScriptedGeneralist({"P-None|": ("Answer: go home", 3, "stop"), think: ("she leaves early", 96, "length"),
                            forced: (" stay late", 3, "stop"), "P-prime|": ("Answer: go home", 3, "stop"),
                            "P-fast|": ("Answer: stay late", 3, "stop")},
                           scores={"go home": -1.0, "stay late": -2.0})
    out = _worker(g, task=task)(rows)
    # generation: one call per (params, adapter), the direct rows' before the think rows'; then the forcing
    assert [(prompts, adapter) for (prompts, _), adapter in zip(g.calls, g.adapters)] == [
        (["P-None|"], None), (["P-prime|"], "prime"), (["P-fast|"], "fast"), ([think], "prime"), ([forced], "prime")]
    assert g.adapters[5:] == [None, "prime", "prime", "fast"]  # each row's candidates scored by its own model
    assert [r["forced_text"] for r in out] == [None, " stay late", None, None]
    assert [AnswerUser.batch_key(r) for r in rows] == [(None, False), ("prime", True), ("prime", False), ("fast", False)]


def test_without_force_answer_a_cut_off_think_row_stays_unparsed():
    think = _row(THINK)["prompt"] + "<think>\n"
    g = ScriptedGeneralist({think: ("they like slow dramas and", 96, "length")})
    [row] = _worker(g, force_answer=False)([_row(THINK)])
    assert len(g.calls) == 1 and not row["forced"] and row["completion_tokens"] == 96
    record, outcome = prediction_record(THINK, "test_query", _example(), Generated(**row), RATING)
    assert record["predicted"] is None and record["parse_error"] and record["forced"] is False
    assert outcome.trace == "they like slow dramas and" and outcome.forced is False


def test_ranking_scores_the_candidates_after_the_forced_answer_and_the_models_own_thinking():
    task = RankingTask(hit_k=[1, 2])
    candidates = ["keep calm", "go home", "stay late"]
    think = _row(THINK, candidates=candidates)
    g = ScriptedGeneralist({think["prompt"] + "<think>\n": ("she leaves early and", 96, "length"),
                            think["prompt"] + answer_prefix("she leaves early and"): (" go home", 2, "stop")},
                           scores={"keep calm": -1.0, "go home": -2.0, "stay late": -0.5})
    [row] = _worker(g, task=task)([think])
    assert g.calls[1][1] == SamplingParams(max_new_tokens=48, temperature=0.0, seed=7)  # the ranking kind's budget
    assert g.scored == [f"<think>\nshe leaves early and\n</think>\nAnswer: {c}" for c in candidates]
    outcome, _ = answer_outcome(_example(output="keep calm", candidates=candidates), PromptMode.personal_think,
                                Generated(**row), task)
    # the forced "go home" is rank 1, then by score: "stay late" (-0.5), "keep calm" (-1.0)
    assert (outcome.predicted, outcome.gold_rank, outcome.forced) == ("go home", 3, True)


def test_the_report_shows_the_share_of_forced_answers_per_think_mode():
    think = [  # (text, forced completion)
        ("<think>\nthey like dramas\n</think>\nAnswer: 4", None),  # its own answer line: strict
        ("<think>\nthey like", " 3"),  # forced, parsed
        ("<think>\nhmm", " maybe"),  # forced, unparsed
        ("<think>\nthey like dramas\n</think>\n5", None),  # the parser's fallback
    ]
    direct = ["Answer: 4", "no idea", "Answer: 2", "Answer: 5"]
    outcomes = {}
    for mode, gens in [
        (THINK, [Generated(f"u{i}/q", t, 5, "stop", None, forced=f is not None, forced_text=f)
                 for i, (t, f) in enumerate(think)]),
        (DIRECT, [Generated(f"u{i}/q", t, 3, "stop", None) for i, t in enumerate(direct)]),
    ]:
        outcomes[mode] = [prediction_record(mode, "test_query", _example(f"u{i}"), gen, RATING)[1]
                          for i, gen in enumerate(gens)]
    results = [summarize_mode(RATING, mode.value, "test_query", o, n_resamples=0, seed=0) for mode, o in outcomes.items()]
    think_result, direct_result = results
    assert think_result.health["forced"].value == pytest.approx(2 / 4)
    assert think_result.health["parse_rate"].value == pytest.approx(3 / 4)  # the forced answer that parsed counts
    assert think_result.health["strict_parse_rate"].value == pytest.approx(1 / 4)  # forced answers are never strict
    assert (think_result.parse_failures, think_result.fallback_parses) == (1, 1)  # forced is not "by fallback"
    assert direct_result.health["forced"].value is None

    report = Report(job="j", spec_hash="h", model={"name_or_path": "m"}, data={}, task=RATING, results=results)
    assert report.to_json()["results"]["test_query"][THINK.value]["health"]["forced"]["value"] == 0.5
    lines = render_markdown(report).split("Paired differences")[0].splitlines()  # the modes' table
    header = next(line for line in lines if line.startswith("| mode |"))
    column = [c.strip() for c in header.split("|")].index("forced")
    cells = {line.split("|")[1].strip().strip("*"): line.split("|")[column].strip()
             for line in lines if line.startswith(("| generalist-", "| **generalist-"))}
    assert cells == {THINK.value: "0.50", DIRECT.value: "–"}


# ------------------------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def tiny_engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from intra-op threads on a shared machine
    engine = create_engine(ModelSpec(name_or_path="tiny-test"), device="cpu", max_batch_size=4)
    yield engine
    engine.close()
    torch.set_num_threads(threads)


def test_the_tiny_model_completes_a_forced_answer_from_its_own_thinking(tiny_engine):
    rows = []
    for mode in (THINK, DIRECT):
        prompt = render_prompt(tiny_engine.tokenizer, MODES[mode][1], task=RATING, templates=PromptTemplates(),
                               query_input="Heat (1995)", profile="Loves slow dramas.")
        rows.append({**_row(mode), "prompt": prompt})
    think, direct = AnswerUser(tiny_engine, AnswerConfig(task=RATING, max_new_tokens=4, seed=0))(rows)
    assert not direct["forced"]
    # four tokens are too few for the random model to think and answer: it is cut off and forced
    assert think["finish_reason"] == "length" and needs_forcing(parse_output(think["text"], RATING), "length")
    assert think["forced"]
    thinking = own_thinking(parse_output(think["text"], RATING))
    # the forced answer is the greedy completion, within the answer budget, of the closed think block
    [expected] = tiny_engine.generate([rows[0]["prompt"] + answer_prefix(thinking)],
                                      SamplingParams(max_new_tokens=8, temperature=0.0, seed=0))
    assert think["forced_text"] == expected.text
    assert think["completion_tokens"] == 4 + expected.completion_tokens
