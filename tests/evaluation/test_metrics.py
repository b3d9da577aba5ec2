"""Task and thinking-health metrics against values computed by hand, and the bootstrap intervals."""

import math

import numpy as np
import pytest

from prime_ray.evaluation.metrics import (
    Outcome,
    accuracy,
    bootstrap_interval,
    candidate_ranking,
    distinct_n,
    gold_rank,
    hit_at_k,
    macro_f1,
    mae,
    mean_interval,
    mrr,
    rating_errors,
    repetition_rate,
    rmse,
    rouge_f,
    thinking_health,
)
from prime_ray.spec import LabelTask, RankingTask, RatingTask, TextTask
from prime_ray.tasks import task_kind


def task_metrics(task, outcomes, *, n_resamples, seed):
    return task_kind(task).metrics(task, outcomes, n_resamples=n_resamples, seed=seed)


def metric_names(task):
    return task_kind(task).metric_names(task)


def test_accuracy_and_macro_f1_on_a_small_confusion():
    gold = ["a", "a", "b", "b", "c"]
    pred = ["A", "b", "b", None, "c"]  # case is ignored; None (unparsed) is wrong
    assert accuracy(gold, pred) == pytest.approx(3 / 5)
    # a: tp1 fp0 fn1 -> F 2/3; b: tp1 fp1 fn1 -> F 1/2; c: tp1 -> F 1
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_macro_f1_counts_labels_only_predicted():
    # gold has only "a"; the prediction "b" adds a label with F1 0
    assert macro_f1(["a", "a"], ["a", "b"]) == pytest.approx((2 / 3 + 0) / 2)


def test_rating_errors_with_an_unparsed_answer_cost_the_full_range():
    errors = rating_errors(["5", "3", "4", "1"], ["4", "3", None, "2"], 1, 5)
    assert errors.tolist() == [1, 0, 4, 1]
    assert mae(errors) == pytest.approx(1.5)
    assert rmse(errors) == pytest.approx(math.sqrt(18 / 4))
    assert rating_errors(["3"], ["three"], 1, 5).tolist() == [4]  # non-numeric is unparsed too


def test_rouge_on_a_sentence_pair():
    gold = "police arrest the suspect after a long chase"
    pred = "after a long chase police arrest suspect"
    scores = rouge_f([gold, gold], [pred, None])
    # unigrams: 7 of 7 predicted words match, 7 of 8 gold words: F = 2·1·(7/8)/(1+7/8)
    assert scores["rouge1"][0] == pytest.approx(2 * (7 / 8) / (15 / 8))
    # LCS "after a long chase" = 4: P 4/7, R 4/8
    assert scores["rougeL"][0] == pytest.approx(2 * (4 / 7) * (4 / 8) / (4 / 7 + 4 / 8))
    assert scores["rouge1"][1] == 0.0 and scores["rougeL"][1] == 0.0


def test_ranking_parsed_first_then_by_score():
    candidates = ["a", "b", "c", "d"]
    ranking = candidate_ranking("b", candidates, [-1.0, -3.0, -2.0, -0.5])
    assert ranking == ["b", "d", "a", "c"]
    assert gold_rank(ranking, "a") == 3
    assert candidate_ranking(None, candidates, [0.0] * 4) == []
    ranks = [1, 3, None, 2]
    assert hit_at_k(ranks, 1) == pytest.approx(0.25)
    assert hit_at_k(ranks, 3) == pytest.approx(0.75)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)


def test_repetition_and_distinct():
    assert repetition_rate("a b c a b c") == pytest.approx(1 / 4)  # abc bca cab abc
    assert repetition_rate("The user likes drama and comedy films") == 0.0
    assert repetition_rate("too short") is None
    assert repetition_rate("x x x x x x x x x x") == pytest.approx(7 / 8)
    assert distinct_n(["a b c", "a b d"]) == pytest.approx(3 / 4)
    assert distinct_n(["one", None]) is None


def test_task_metrics_per_kind():
    outcomes = [Outcome("u/1", "5", "4"), Outcome("u/2", "3", "3"), Outcome("u/3", "4", None), Outcome("u/4", "1", "2")]
    rating = task_metrics(RatingTask(min=1, max=5), outcomes, n_resamples=200, seed=0)
    assert list(rating) == metric_names(RatingTask()) == ["mae", "rmse", "accuracy"]
    assert rating["mae"].value == pytest.approx(1.5)
    assert rating["accuracy"].value == pytest.approx(0.25)
    assert rating["mae"].low <= 1.5 <= rating["mae"].high

    labels = task_metrics(LabelTask(labels=["a", "b", "c"]),
                          [Outcome(str(i), g, p) for i, (g, p) in enumerate(zip("aabbc", ["a", "b", "b", None, "c"]))],
                          n_resamples=200, seed=0)
    assert labels["accuracy"].value == pytest.approx(0.6)
    assert labels["macro_f1"].value == pytest.approx(13 / 18)

    ranked = task_metrics(RankingTask(hit_k=[1, 3]),
                          [Outcome(str(i), "g", "x", gold_rank=r) for i, r in enumerate([1, 3, None, 2])],
                          n_resamples=0, seed=0)
    assert ranked["mrr"].value == pytest.approx(11 / 24) and ranked["mrr"].low is None
    assert ranked["hit@3"].value == pytest.approx(0.75)

    text = task_metrics(TextTask(), [Outcome("1", "a b", "a b"), Outcome("2", "a b", None)], n_resamples=0, seed=0)
    assert text["rouge1"].value == pytest.approx(0.5)


def test_thinking_health():
    outcomes = [
        Outcome("1", "4", "4", trace="a b c a b c"),
        Outcome("2", "4", None, trace="the user rates dramas high"),
        Outcome("3", "4", "3", trace=None),  # not asked to think: not counted
        Outcome("4", "4", "4", trace="ok"),  # too short for 3-grams: no repetition value
        Outcome("5", "4", "4", trace=""),  # asked to think, answered at once: 0 words
    ]
    health = thinking_health(outcomes, n_resamples=100, seed=0)
    assert health["parse_rate"].value == pytest.approx(0.8)
    assert health["repetition"].value == pytest.approx((0.25 + 0.0) / 2)
    assert health["trace_words"].value == pytest.approx((6 + 5 + 1 + 0) / 4)
    # bigrams: ab bc ca ab bc | the-user user-rates rates-dramas dramas-high | (none): 7 unique of 9
    assert health["distinct_2"].value == pytest.approx(7 / 9)
    direct = thinking_health([Outcome("1", "4", "4")], n_resamples=100, seed=0)
    assert direct["repetition"].value is None and direct["trace_words"].value is None


def test_bootstrap_contains_the_true_mean_with_the_expected_width():
    sample = np.random.default_rng(7).normal(3.0, 1.0, size=2000)
    metric = mean_interval(sample, n_resamples=2000, seed=0)
    assert metric.low < 3.0 < metric.high
    expected_width = 2 * 1.96 / math.sqrt(2000)
    assert metric.high - metric.low == pytest.approx(expected_width, rel=0.15)
    assert mean_interval(sample, n_resamples=2000, seed=0) == metric  # seeded: reproducible


def test_bootstrap_degenerate_and_tiny_samples():
    constant = mean_interval([2.0] * 30, n_resamples=500, seed=0)
    assert (constant.value, constant.low, constant.high) == (2.0, 2.0, 2.0)
    assert bootstrap_interval(1, lambda idx: 0.0, n_resamples=500, seed=0) is None
    assert bootstrap_interval(10, lambda idx: 0.0, n_resamples=0, seed=0) is None
    assert mean_interval([], n_resamples=500, seed=0).value is None


def test_strict_and_lenient_parse_counts():
    from prime_ray.evaluation.report import summarize_mode
    from prime_ray.models.parser import parse_output

    task = RatingTask()
    texts = ["Answer: 4", "<think>t</think>\nAnswer: 3", "I think it is a 5.", "Probably 2/5", "no idea"]
    outcomes = []
    for i, text in enumerate(texts):
        parsed = parse_output(text, task)
        outcomes.append(Outcome(str(i), "4", parsed.answer, strict=parsed.strict))
    # parsed: 4 of 5 (lenient); on an answer line: 2 of 5 (strict); 2 by the fallback, 1 failed
    health = thinking_health(outcomes, n_resamples=0, seed=0)
    assert health["parse_rate"].value == pytest.approx(4 / 5)
    assert health["strict_parse_rate"].value == pytest.approx(2 / 5)
    result = summarize_mode(task, "generalist-think", "test_query", outcomes, n_resamples=0, seed=0)
    assert (result.parse_failures, result.fallback_parses) == (1, 2)
