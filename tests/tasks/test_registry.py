"""The task-kind registry: one object per kind, looked up by spec or name, unknown kinds refused clearly."""

from __future__ import annotations

import pytest

from prime_ray.evaluation.metrics import Outcome
from prime_ray.spec import LabelTask, RankingTask, RatingTask, TextTask
from prime_ray.tasks import TaskKind, UnknownTaskKind, register_task_kind, task_kind, task_kinds


def test_every_kind_of_the_spec_is_registered_once():
    assert task_kinds() == ["label", "ranking", "rating", "text"]
    for spec in (LabelTask(labels=["a", "b"]), RatingTask(), TextTask(), RankingTask()):
        kind = task_kind(spec)
        assert kind is task_kind(spec.kind) and kind.name == spec.kind
        assert kind.metric_names(spec)[0] == kind.primary_metric
        assert kind.answer_instruction(spec).startswith("Answer with")
        assert kind.answer_tokens(spec) > 0


def test_primary_metrics_and_their_direction():
    assert {n: (task_kind(n).primary_metric, task_kind(n).lower_is_better) for n in task_kinds()} == {
        "label": ("accuracy", False), "rating": ("mae", True), "text": ("rouge1", False), "ranking": ("mrr", False)}
    assert [task_kind(n).exact_answer for n in task_kinds()] == [True, True, True, False]


def test_an_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(UnknownTaskKind, match=r"unknown task kind 'regression'; known kinds: label, ranking, rating, text"):
        task_kind("regression")

    class Spec:
        kind = "poll"

    with pytest.raises(UnknownTaskKind, match="'poll'"):
        task_kind(Spec())
    with pytest.raises(UnknownTaskKind, match="None"):
        task_kind(object())


def test_a_second_class_cannot_take_a_registered_name():
    class Other(TaskKind):
        name = "rating"
        primary_metric = "mae"

    with pytest.raises(ValueError, match="already registered by RatingKind"):
        register_task_kind(Other)
    assert type(task_kind("rating")).__name__ == "RatingKind"


def test_example_scores_are_the_metrics_per_example():
    task = RatingTask(tolerance=1)
    outcomes = [Outcome("1", "4", "5"), Outcome("2", "2", "5"), Outcome("3", "3", None)]
    scores = task_kind(task).example_scores(task, outcomes)
    assert scores["mae"].tolist() == [1.0, 3.0, 4.0] and scores["accuracy"].tolist() == [1.0, 0.0, 0.0]
    metrics = task_kind(task).metrics(task, outcomes, n_resamples=0, seed=0)
    assert metrics["mae"].value == pytest.approx(8 / 3) and metrics["rmse"].value == pytest.approx((26 / 3) ** 0.5)
