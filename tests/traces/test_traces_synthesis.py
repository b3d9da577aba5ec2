"""Trace synthesis for one user with a scripted generalist: the keep path, each rejection, errors, stats.

G is scripted (the thing under test is the synthesis around it): it answers by the query and the
kind of prompt (direct, hinted rationalization, no-hint verification), and scores a gold answer
higher after a trace than without one.
"""

import json

import pytest

from prime_ray.data.schema import Example, Item
from prime_ray.engine.base import Generation
from prime_ray.memory.store import ExampleMemory
from prime_ray.spec import derive_seed, parse_spec
from prime_ray.traces.stats import trace_stats
from prime_ray.traces.store import read_kept_traces, write_traces
from prime_ray.traces.synthesis import SynthesisConfig, TraceSynthesizer, synthesis_row

GOOD = "They loved GoldenEye and Heat; both are action thrillers like this film, so they should enjoy it."
LEAK = "The hint says the rating is 4, so the user must like this film quite a lot overall."
LOOP = "the user likes it and " * 15
OPENING = "Looking at this user: "

# query input -> (direct output, [rationalization per sample], verification output)
SCRIPT = {
    "Die Hard": ("Answer: 4", [GOOD + "\n</think>\nAnswer: 4", LEAK + "\n</think>\nAnswer: 4"], " 4"),
    "Speed": ("Answer: 2", [LOOP + "\n</think>\nAnswer: 5", "I cannot tell what they think and..."], " 5"),
    # ends after the reasoning, without an answer line: G completes the answer without the hint
    "Alien": ("Answer: 1", ["They loved Heat and GoldenEye, tense films like this one, so they will like it.",
                            "They dislike horror, and this is a horror film, so they will not enjoy it."], " 5"),
    "Heat 2": ("Answer: 2", [GOOD + "\n</think>\nAnswer: 3", GOOD + "\n</think>\nAnswer: 3"], " 1"),
    "Broken": ("Answer: 3", ["x"], " 3"),
}


class _Tokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "\n".join(m["content"] for m in messages) + "\n<assistant>\n"


SAMPLE_SEEDS = [derive_seed(0, "traces", s) for s in range(2)]


class ScriptedG:
    def __init__(self):
        self.generate_calls = []

    @staticmethod
    def _query(prompt):
        line = next(line for line in prompt.splitlines() if line.startswith("Input: "))
        return line[len("Input: "):]

    def generate(self, prompts, params):
        self.generate_calls.append((len(prompts), params))
        out = []
        for p in prompts:
            direct, samples, verify = SCRIPT[self._query(p)]
            if self._query(p) == "Broken":
                raise RuntimeError("replica lost")
            if p.endswith("Answer:"):
                text = verify
            elif p.endswith("<think>\n" + OPENING):
                assert "real answer is" in p
                text = samples[SAMPLE_SEEDS.index(params.seed)]  # sample s is seeded derive_seed(0, 'traces', s)
            else:
                assert "real answer" not in p
                text = direct
            finish = "length" if text.endswith("...") else "stop"
            out.append(Generation(text=text, prompt_tokens=10, completion_tokens=len(text.split()), finish_reason=finish))
        return out

    def score(self, prompts, continuations):
        return [-1.0 if p.endswith("</think>\nAnswer:") else -3.0 for p in prompts]


def _spec(**overrides):
    doc = {
        "name": "t", "seed": 0, "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": "x"}, "task": {"kind": "rating"}},
        "traces": {"samples_per_example": 2, "trace_opening": OPENING, **overrides.pop("traces", {})},
        "generalist": {"rows_per_call": 2},
        **overrides,
    }
    return parse_spec(doc)


def _row(query, gold, example_id, spec=None):
    ex = Example(example_id=f"u1/{example_id}", user_id="u1", split="train", input=query, output=gold,
                 memory_ids=["h1"])
    memory = ExampleMemory(profile="Likes action.", episodes=(Item(id="h1", input="Heat", output="5"),), scores=(1.0,))
    return synthesis_row(_Tokenizer(), spec or _spec(), ex, memory)


def _run(spec, rows):
    g = ScriptedG()
    out = TraceSynthesizer(g, SynthesisConfig(spec=spec, config_hash="cfg"))(rows)
    return g, out


def _by(out):
    return {(r["example_id"], r["sample_index"]): r for r in out}


ROWS = [_row("Die Hard", "4", "a"), _row("Speed", "5", "b"), _row("Heat 2", "3", "c"), _row("Broken", "3", "d"),
        {"user_id": "u1", "example": {"example_id": "u1/e"}, "prompts": {}}, _row("Alien", "5", "f")]


def test_one_user_keep_path_rejections_and_errors():
    spec = _spec()
    g, out = _run(spec, ROWS)
    rows = _by(out)
    assert len(out) == 4 * 2 + 1 + 1  # two samples for a, b, c, f; one error row each for d and e

    kept = rows[("u1/a", 0)]
    assert kept["kept"] and kept["trace"] == OPENING + GOOD and kept["answer"] == "4" and kept["gold"] == "4"
    assert kept["verdicts"] == {"parsed": True, "answer_match": True, "hint_not_leaked": True, "low_repetition": True,
                                "length_in_range": True, "enough_gain": True}
    assert kept["likelihood_gain"] == pytest.approx(2.0)
    assert kept["direct_answer"] == "4" and kept["direct_correct"] is True
    assert kept["raw_text"].startswith("<think>\n" + OPENING) and "real answer is: 4" in kept["prompt"]
    assert kept["model"] == "tiny-test" and kept["config_hash"] == "cfg" and kept["error"] is None

    assert rows[("u1/a", 1)]["verdicts"]["hint_not_leaked"] is False and not rows[("u1/a", 1)]["kept"]
    assert rows[("u1/b", 0)]["verdicts"]["low_repetition"] is False and rows[("u1/b", 0)]["repetition"] > 0.5
    assert rows[("u1/b", 1)]["verdicts"]["parsed"] is False and rows[("u1/b", 1)]["answer"] is None  # cut off
    assert rows[("u1/c", 0)]["kept"] and rows[("u1/c", 1)]["kept"] and rows[("u1/c", 0)]["direct_correct"] is False
    # a trace that ended without an answer gets G's answer from the trace alone (both of f's samples)
    assert rows[("u1/f", 0)]["answer"] == rows[("u1/f", 0)]["answer_without_hint"] == "5" and rows[("u1/f", 0)]["kept"]
    # only those: the stricter check for every trace is off by default
    assert [k for k, r in rows.items() if r["answer_without_hint"] is not None] == [("u1/f", 0), ("u1/f", 1)]

    # a failing call and an invalid row are recorded on their own rows; the others went on
    assert "replica lost" in rows[("u1/d", -1)]["error"] and not rows[("u1/d", -1)]["kept"]
    assert "ValidationError" in rows[("u1/e", -1)]["error"]

    # rows_per_call=2: examples go in chunks of 2; sample s is seeded derive_seed(seed, "traces", s) for every example
    rationalizations = [(n, p) for n, p in g.generate_calls if p.temperature > 0]
    assert {p.seed for _, p in rationalizations} == set(SAMPLE_SEEDS)
    assert max(n for n, _ in rationalizations) == 2 and len(rationalizations) == 3 * 2  # 3 chunks x 2 samples


def test_stats_add_up_and_kept_traces_read_back(tmp_path):
    spec = _spec()
    _, out = _run(spec, ROWS)
    counts, metrics = trace_stats(out, spec.data.task, spec.traces.filters)
    assert counts["examples"] == 6 and counts["users"] == 1
    assert counts["traces_generated"] == 8 and counts["errors"] == 2
    assert counts["after_parsed"] == 7 and counts["after_answer_match"] == 7
    assert counts["after_hint_not_leaked"] == 6 and counts["after_low_repetition"] == 5 and counts["after_length_in_range"] == 5
    assert counts["kept"] == 5 and metrics["keep_rate"] == pytest.approx(5 / 8, abs=1e-3)
    assert counts["examples_with_kept_trace"] == 3 and counts["examples_direct_correct"] == 1  # a
    assert counts["tokens_generated"] == sum(r["generated_tokens"] for r in out) > 0

    path = tmp_path / "traces.parquet"
    write_traces(path, out)
    kept = read_kept_traces(path)
    assert sorted(kept) == ["u1/a", "u1/c", "u1/f"] and len(kept["u1/c"]) == 2
    [trace] = kept["u1/a"]
    assert (trace.user_id, trace.sample_index, trace.trace, trace.answer) == ("u1", 0, OPENING + GOOD, "4")
    assert trace.score == pytest.approx(2.0)


def test_min_gain_and_the_gain_statistics():
    spec = _spec()
    _, out = _run(spec, ROWS)
    _, metrics = trace_stats(out, spec.data.task, spec.traces.filters)
    # scripted: log p(y | x, trace) = −1, log p(y | x) = −3: every scored trace gains 2 nats
    assert metrics["gain_kept"] == {"n": 5, "mean": 2.0, "p10": 2.0, "median": 2.0, "p90": 2.0, "share_positive": 1.0}
    scored = metrics["gain_kept"]["n"] + metrics["gain_rejected"]["n"]
    strict = _spec(traces={"filters": {"min_gain": 2.5}})
    _, out = _run(strict, ROWS)
    counts, metrics = trace_stats(out, strict.data.task, strict.traces.filters)
    assert counts["kept"] == 0 and counts["after_enough_gain"] == 0 and metrics["filter_order"][-1] == "enough_gain"
    assert metrics["gain_kept"]["n"] == 0 and metrics["gain_rejected"]["n"] == scored


def test_the_stricter_check_asks_g_for_the_answer_without_the_hint():
    spec = _spec(traces={"filters": {"answer_without_hint": True}})
    g, out = _run(spec, ROWS[:3])
    rows = _by(out)
    # written as 3 under the hint, but from the trace alone G answers 1: not verified
    assert rows[("u1/c", 0)]["answer"] == "3" and rows[("u1/c", 0)]["answer_without_hint"] == "1"
    assert rows[("u1/c", 0)]["verdicts"]["answer_match"] is False and not rows[("u1/c", 0)]["kept"]
    assert rows[("u1/a", 0)]["answer_without_hint"] == "4" and rows[("u1/a", 0)]["kept"]
    assert sum(r["kept"] for r in out) == 1


def test_fast_filter_skips_examples_answered_right_directly():
    spec = _spec(traces={"filters": {"drop_if_direct_correct": True}})
    _, out = _run(spec, ROWS[:3])
    rows = _by(out)
    assert set(rows) == {("u1/a", -1), ("u1/b", 0), ("u1/b", 1), ("u1/c", 0), ("u1/c", 1)}
    assert rows[("u1/a", -1)]["error"] is None and rows[("u1/a", -1)]["direct_correct"] is True
    counts, _ = trace_stats(out, spec.data.task, spec.traces.filters)
    assert counts["examples_skipped"] == 1 and counts["traces_generated"] == 4


def test_free_text_keeps_the_trace_with_the_best_positive_gain():
    spec = parse_spec({
        "name": "t", "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": "x"}, "task": {"kind": "text"}},
        "traces": {"samples_per_example": 2, "direct_answer": False},
    })

    class TextG(ScriptedG):
        def generate(self, prompts, params):
            if prompts[0].endswith("<think>\n"):  # no trace_opening in this spec
                sample = SAMPLE_SEEDS.index(params.seed)
                return [Generation(text=f"{GOOD} Take {sample}.\n</think>\nAnswer: Big win", prompt_tokens=1,
                                   completion_tokens=20, finish_reason="stop") for _ in prompts]
            return [Generation(text=" Big win", prompt_tokens=1, completion_tokens=2, finish_reason="stop")
                    for _ in prompts]

        def score(self, prompts, continuations):
            return [-1.0 if "Take 1" in p else -2.0 if "Take 0" in p else -4.0 for p in prompts]

    out = TraceSynthesizer(TextG(), SynthesisConfig(spec=spec, config_hash="cfg"))(
        [_row("Die Hard", "Big win", "a", spec)])
    assert [(r["sample_index"], r["kept"], r["likelihood_gain"]) for r in out] == [(0, False, 2.0), (1, True, 3.0)]
    assert out[0]["verdicts"]["answer_match"] is False  # no exact match for text; the gain ranking decides
    assert out[0]["direct_answer"] is None
    json.dumps(out)  # rows travel as JSON between Ray Data workers and the driver
