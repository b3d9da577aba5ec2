"""The trace filters on hand-written traces: each verdict, the keep rule, the funnel, gain ranking."""

import pytest

from prime_ray.spec import LabelTask, RatingTask, TextTask, TraceFilters
from prime_ray.traces import filters as F

RATING = RatingTask()
FILTERS = TraceFilters()

GOOD = (
    "The user gave 5 to GoldenEye and 4 to Heat, both action thrillers. "
    "Die Hard is an action thriller of the same kind, so they will probably like it a lot."
)
LOOP = "I think the user likes it. " * 12
LEAKS = [
    "The hint says 4, and the user liked similar films, so 4 fits well here.",
    "Since the answer is given as 4, the user must have liked the plot of this movie.",
    "We are told the user would rate it 4, which matches their taste in action films.",
    "As provided, the rating is 4; the user enjoys action movies and thrillers a lot.",
    "The given answer of 4 agrees with the user's history of action movies overall.",
    "The answer is 4. The user liked GoldenEye and Heat, which are similar action films.",
    "This user's real answer is 4, and they liked GoldenEye and Heat, similar action films.",
    "This user rated the movie as 4 out of 5, which is a pretty good score for an action film.",
    "This user rated it with a score of 4 on the scale, since they like action films a lot.",
]


def test_a_correct_grounded_trace_passes_every_filter():
    v = F.verdicts(trace=GOOD, answer_ok=True, gold="4", filters=FILTERS)
    assert v == {"parsed": True, "answer_match": True, "hint_not_leaked": True, "low_repetition": True, "length_in_range": True}
    assert F.keep({**v, "enough_gain": True}, RATING, FILTERS)


def test_a_wrong_answer_is_rejected_by_answer_match_only():
    v = F.verdicts(trace=GOOD, answer_ok=False, gold="4", filters=FILTERS)
    assert [name for name, ok in v.items() if not ok] == ["answer_match"]
    assert not F.keep({**v, "enough_gain": True}, RATING, FILTERS)
    # turned off in the spec: the same trace is kept
    assert F.keep({**v, "enough_gain": True}, RATING, TraceFilters(answer_match=False))


@pytest.mark.parametrize("trace", LEAKS)
def test_a_leaked_hint_is_rejected(trace):
    v = F.verdicts(trace=trace, answer_ok=True, gold="4", filters=FILTERS)
    assert v["hint_not_leaked"] is False
    assert not F.keep({**v, "enough_gain": True}, RATING, FILTERS)
    assert F.keep({**v, "enough_gain": True}, RATING, TraceFilters(leaked_hint=False))


def test_reasoning_that_merely_uses_words_like_given_is_not_a_leak():
    trace = "Given the user's love of action films, the rating is likely high. They rated Heat 4, a similar film."
    assert not F.leaks_hint(trace, "4")
    # the answer stated as the conclusion (last sentence) is fine; only an opening statement leaks
    assert not F.opens_with_answer("They like thrillers. So the rating is 4.", "4")
    assert F.opens_with_answer("Rating: 4. They like thrillers.", "4")
    assert F.opens_with_answer('They rated it as a "4" since it is a thriller.', "4")
    assert F.opens_with_answer("The label is Drama, since they watch dramas.", "Drama")
    assert not F.opens_with_answer("They gave 14 films a 5, and loved thrillers.", "4")
    assert not F.opens_with_answer("The rating of 3.5 stars from critics is irrelevant. They like it.", "4")


def test_a_repetition_loop_is_degenerate():
    assert F.repetition(LOOP) > 0.8
    assert F.repetition(GOOD) == 0.0
    assert F.repetition("too short") == 0.0
    v = F.verdicts(trace=LOOP, answer_ok=True, gold="4", filters=FILTERS)
    assert v["low_repetition"] is False and v["length_in_range"] is True
    assert F.verdicts(trace=LOOP, answer_ok=True, gold="4", filters=TraceFilters(max_repetition=1.0))["low_repetition"]


def test_length_bounds_count_words():
    short = F.verdicts(trace="Likes action.", answer_ok=True, gold="4", filters=FILTERS)
    assert short["length_in_range"] is False
    assert F.verdicts(trace=GOOD, answer_ok=True, gold="4", filters=TraceFilters(max_trace_words=10))["length_in_range"] is False
    assert F.words("The user's taste: action, thrillers!") == ["the", "user's", "taste", "action", "thrillers"]


def test_an_unparseable_output_fails_every_verdict():
    v = F.verdicts(trace=None, answer_ok=None, gold="4", filters=FILTERS)
    assert not any(v.values())
    assert not F.keep({**v, "enough_gain": True}, RATING, FILTERS)


def test_applied_filters_depend_on_the_task():
    assert F.applied_filters(RATING, FILTERS) == ("parsed", "answer_match", "hint_not_leaked", "low_repetition", "length_in_range")
    assert F.applied_filters(LabelTask(labels=["a", "b"]), TraceFilters(leaked_hint=False)) == (
        "parsed", "answer_match", "low_repetition", "length_in_range")
    # free text: no exact answer to match, the likelihood gain decides
    assert F.applied_filters(TextTask(), FILTERS) == ("parsed", "hint_not_leaked", "low_repetition", "length_in_range", "enough_gain")


def test_min_gain_keeps_traces_that_make_the_gold_answer_more_likely():
    on = TraceFilters(min_gain=0.0)
    assert F.applied_filters(RATING, on)[-1] == "enough_gain" and "enough_gain" not in F.applied_filters(RATING, FILTERS)
    assert [F.gain_passes(g, RATING, on) for g in (0.3, 0.0, -0.71, None)] == [True, False, False, False]
    assert [F.gain_passes(g, RATING, FILTERS) for g in (-0.71, None)] == [True, False]  # off: any scored gain
    margin = TraceFilters(min_gain=0.5)
    assert [F.gain_passes(g, TextTask(), margin) for g in (0.6, 0.4)] == [True, False]
    assert [F.gain_passes(g, TextTask(), FILTERS) for g in (0.1, -0.1)] == [True, False]  # free text: > 0
    assert F.keep({"parsed": True, "answer_match": True, "hint_not_leaked": True, "low_repetition": True, "length_in_range": True,
                   "enough_gain": False}, RATING, on) is False


def test_gain_distribution_by_hand():
    from prime_ray.traces.stats import gain_distribution

    # sorted: -2 -1 0 1 7; linear percentiles: p10 at position 0.4 -> -1.6, median 0, p90 at 3.6 -> 4.6
    assert gain_distribution([1.0, -1.0, 7.0, 0.0, -2.0]) == {
        "n": 5, "mean": 1.0, "p10": -1.6, "median": 0.0, "p90": 4.6, "share_positive": 0.4}
    assert gain_distribution([])["mean"] is None and gain_distribution([])["n"] == 0


def test_rank_by_gain_keeps_the_best_positive_eligible_traces():
    gains = [0.5, 2.0, -1.0, 3.0, None]
    eligible = [True, True, True, False, True]
    assert F.rank_by_gain(gains, eligible, keep_top=1) == [False, True, False, False, False]
    assert F.rank_by_gain(gains, eligible, keep_top=5) == [True, True, False, False, False]
    assert F.rank_by_gain([-0.1, 0.0], [True, True], keep_top=2) == [False, False]


def test_survivors_after_each_is_a_funnel():
    verdicts = [
        {"parsed": True, "answer_match": True, "hint_not_leaked": True},
        {"parsed": True, "answer_match": False, "hint_not_leaked": True},
        {"parsed": True, "answer_match": True, "hint_not_leaked": False},
        {"parsed": False, "answer_match": False, "hint_not_leaked": False},
    ]
    assert F.survivors_after_each(verdicts, ["parsed", "answer_match", "hint_not_leaked"]) == {
        "parsed": 3, "answer_match": 2, "hint_not_leaked": 1}
