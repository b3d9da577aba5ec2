"""The output parser on well-formed and malformed model output, and answer correctness per task."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prime_ray.models.parser import ParsedOutput, is_correct, normalize_label, parse_output
from prime_ray.models.prompts import completion_text
from prime_ray.spec import LabelTask, RankingTask, RatingTask, TextTask

RATING = RatingTask(min=1, max=5)
HALF_RATING = RatingTask(min=0, max=10, integer=False)
LABEL = LabelTask(labels=["Comedy", "Drama", "Sci-Fi", "Film-Noir", "Noir"])
TEXT = TextTask()
RANKING = RankingTask()
CANDIDATES = ["Dogs are loyal companions.", "Cats are independent and calm.", "Fish need little care."]

# (task, text, expected answer or None, expected trace, substring of the reason when there is no answer)
CASES = [
    # well-formed
    (RATING, "<think>\nShe loves dramas.\n</think>\nAnswer: 4", "4", "She loves dramas.", None),
    (RATING, "Answer: 4", "4", None, None),
    # number shapes
    (RATING, "Answer: 4.0", "4", None, None),
    (RATING, "Answer: 4/5", "4", None, None),
    (RATING, "Answer: **4**", "4", None, None),
    (RATING, "**Answer:** 3 stars", "3", None, None),
    (RATING, "Answer: 4 out of 5", "4", None, None),
    (RATING, "Answer: four", "4", None, None),
    (RATING, "Answer: 3.6", "4", None, None),
    (RATING, "answer: 2", "2", None, None),
    (RATING, "ANSWER：5", "5", None, None),
    (RATING, "Final answer: 1.", "1", None, None),
    (HALF_RATING, "Answer: 7.5", "7.5", None, None),
    (HALF_RATING, "Answer: 10/10", "10", None, None),
    # out of range / no number
    (RATING, "Answer: 7", None, None, "rating 7 out of range [1, 5]"),
    (RATING, "Answer: 0", None, None, "rating 0 out of range [1, 5]"),
    (RATING, "Answer: high", None, None, "no number in answer"),
    # extra text after the answer, the value on the next line
    (RATING, "<think>x</think>\nAnswer: 2\nUser: and now rate this one: 5", "2", "x", None),
    (RATING, "<think>x</think>\nAnswer:\n\n3\nmore", "3", "x", None),
    (RATING, "Answer: 5\nAnswer: 1", "5", None, None),
    # think tags: unclosed, missing opener, odd spacing, answer inside an unclosed block
    (RATING, "<think>\nHe rated 5 films a 5.\nAnswer: 3", "3", "He rated 5 films a 5.", None),
    (RATING, "<think>\nHe rated many films a 5 and then", None, "He rated many films a 5 and then", "no answer found"),
    (RATING, "reasoning without the opener\n</think>\nAnswer: 2", "2", "reasoning without the opener", None),
    (RATING, "< think >a</ think >\nAnswer: 4", "4", "a", None),
    (RATING, "<think></think>\nAnswer: 4", "4", None, None),
    # no answer line: fallbacks
    (RATING, "I would say this user gives it a 4.", "4", None, None),
    (RATING, "Probably 4/5, maybe 3.", "3", None, None),
    (RATING, "Out of 100 films, this rates 2", "2", None, None),
    (RATING, "<think>a</think>\nThe rating is 5.", "5", "a", None),
    (RATING, "no idea at all", None, None, "no answer found"),
    (RATING, "Rated 9 and 12", None, None, "no answer found"),
    # labels: case, punctuation, wording, overlapping labels, ambiguity, unknown labels
    (LABEL, "Answer: comedy", "Comedy", None, None),
    (LABEL, "Answer: **Drama**.", "Drama", None, None),
    (LABEL, 'Answer: "sci-fi"', "Sci-Fi", None, None),
    (LABEL, "Answer: The genre is Comedy!", "Comedy", None, None),
    (LABEL, "Answer: Film-Noir", "Film-Noir", None, None),
    (LABEL, "Answer: noir", "Noir", None, None),
    (LABEL, "Answer: Comedy or Drama", None, None, "several labels"),
    (LABEL, "Answer: Foo", None, None, "label 'Foo' not in label set"),
    (LABEL, "<think>comedy fans</think>\nIt is a drama.", "Drama", "comedy fans", None),
    (LABEL, "Comedy is fun.\nI think: drama", "Drama", None, None),
    (LABEL, "Drama.\nNothing here", None, None, "no answer found"),
    # ranking: number forms, text, partial text, out of range
    (RANKING, "Answer: 2", CANDIDATES[1], None, None),
    (RANKING, "Answer: [3]", CANDIDATES[2], None, None),
    (RANKING, "Answer: Candidate 1", CANDIDATES[0], None, None),
    (RANKING, "Answer: cats are independent and calm", CANDIDATES[1], None, None),
    (RANKING, "Answer: [2] Cats are independent and calm.", CANDIDATES[1], None, None),
    (RANKING, "Answer: Fish need little", CANDIDATES[2], None, None),
    (RANKING, "Answer: 7", None, None, "candidate 7 out of range [1, 3]"),
    (RANKING, "Answer: birds", None, None, "matches no candidate"),
    (RANKING, "<think>t</think>\nI pick candidate 3.", CANDIDATES[2], "t", None),
    # free text: paragraph after the answer, no answer line, quotes
    (TEXT, "<think>t</think>\nAnswer: Local team wins the cup\n\nUser: next", "Local team wins the cup", "t", None),
    (TEXT, 'Answer: "Rain expected tomorrow"', "Rain expected tomorrow", None, None),
    (TEXT, "A headline without the marker", "A headline without the marker", None, None),
    (TEXT, "<think>unfinished reasoning", None, "unfinished reasoning", "no answer found"),
    (TEXT, "Answer:", None, None, "empty answer"),
    # empty output
    (RATING, "", None, None, "empty output"),
    (LABEL, "   \n", None, None, "empty output"),
]


@pytest.mark.parametrize("task, text, answer, trace, reason", CASES)
def test_parse_output(task, text, answer, trace, reason):
    parsed = parse_output(text, task, candidates=CANDIDATES if task.kind == "ranking" else None)
    assert parsed.answer == answer, parsed
    assert parsed.trace == trace, parsed
    if answer is None:
        assert not parsed.ok and reason in parsed.reason, parsed
    else:
        assert parsed.ok and parsed.reason is None, parsed


def test_ranking_without_candidates_says_so():
    parsed = parse_output("Answer: 2", RANKING, candidates=None)
    assert parsed.answer is None and "no candidates" in parsed.reason


@pytest.mark.parametrize("text", [None, 12, "<think>" * 50, "Answer:" * 20, "\x00\ufffd</think><think>", "Answer: " + "9" * 400])
def test_parse_output_never_raises(text):
    for task in (RATING, LABEL, TEXT, RANKING):
        parsed = parse_output(text, task, candidates=CANDIDATES)
        assert parsed.ok or parsed.reason


@pytest.mark.parametrize(
    "task, answer, candidates",
    [(RATING, "3", None), (LABEL, "Sci-Fi", None), (TEXT, "A short headline", None), (RANKING, CANDIDATES[1], CANDIDATES)],
)
def test_completion_text_round_trips_through_the_parser(task, answer, candidates):
    for trace in (None, "They liked similar items.\nSo this one too."):
        parsed = parse_output(completion_text(answer, trace), task, candidates=candidates)
        assert (parsed.answer, parsed.trace) == (answer, trace)


@pytest.mark.parametrize(
    "task, predicted, gold, expected",
    [
        (RATING, "4", "4", True),
        (RATING, "4", "4.0", True),
        (RATING, "3", "4", False),
        (RatingTask(tolerance=1), "3", "4", True),
        (RatingTask(tolerance=1), "2", "4", False),
        (RatingTask(integer=False, tolerance=0.5), "3.5", "4", True),
        (RatingTask(integer=False), "3.5", "4", False),
        (RATING, "3.6", "4", True),  # integer ratings compare after rounding
        (RATING, None, "4", False),
        (RATING, "n/a", "4", False),
        (LABEL, "comedy", "Comedy", True),
        (LABEL, " Drama ", "drama", True),
        (LABEL, "Drama", "Comedy", False),
        (RANKING, CANDIDATES[1], CANDIDATES[1], True),
        (RANKING, CANDIDATES[0], CANDIDATES[1], False),
        (TEXT, "Rain, expected tomorrow!", "rain expected  tomorrow", True),
        (TEXT, "Rain expected today", "Rain expected tomorrow", False),
    ],
)
def test_is_correct(task, predicted, gold, expected):
    assert is_correct(task, predicted, gold) is expected


GENRES = LabelTask(labels=["Action", "Children's", "Film-Noir", "Sci-Fi"])


@pytest.mark.parametrize(
    "task, text, answer",
    [
        # an echoed placeholder line before the real answer does not hide it
        (RATING, "Answer: (a whole number from 1 to 5)\nAnswer: 4", "4"),
        (RATING, "<think>\nlikes it\n</think>\nAnswer: <answer>\nAnswer: 2", "2"),
        (LABEL, "**Answer:** (exactly one of these labels)\nAnswer: Drama", "Drama"),
        (RATING, "Answer: (4)", "4"),  # a lone parenthesized value is the answer
        (RANKING, "Answer: [2]\nAnswer: 3", CANDIDATES[1]),  # "[2]" is a candidate, not a placeholder
        # typographic variants of a label
        (GENRES, "Answer: Children’s", "Children's"),
        (GENRES, "Answer: CHILDREN‘S", "Children's"),
        (GENRES, "Answer: Film–Noir", "Film-Noir"),
        (GENRES, "Answer: Sci\u2011Fi", "Sci-Fi"),
        (GENRES, "Answer: ｓｃｉ-ｆｉ", "Sci-Fi"),  # full-width letters (NFKC)
        (GENRES, "I would pick Children’s", "Children's"),
    ],
)
def test_placeholders_and_typographic_variants(task, text, answer):
    assert parse_output(text, task, candidates=CANDIDATES).answer == answer


def test_labels_compare_in_one_normal_form():
    assert is_correct(GENRES, "Children’s", "Children's") and is_correct(GENRES, "film—noir", "Film-Noir")
    assert normalize_label("  Children’s ") == normalize_label("children's") == "children's"
    assert not is_correct(GENRES, "Children", "Children's")


def test_strict_answers_come_from_an_answer_line():
    assert parse_output("<think>x</think>\nAnswer: 4", RATING).strict
    fallback = parse_output("I would say this user gives it a 4.", RATING)
    assert fallback.answer == "4" and not fallback.strict
    assert not parse_output("no idea", RATING).strict


def test_an_answer_line_is_seen_even_when_its_value_cannot_be_read():
    unreadable = parse_output("<think>\nthey like it\nAnswer: maybe", RATING)
    assert unreadable.answer is None and unreadable.answer_line and unreadable.trace == "they like it"
    assert parse_output("<think>x</think>\nAnswer: 4", RATING).answer_line
    assert not parse_output("<think>\nthey like it and", RATING).answer_line  # cut off while thinking
    assert not parse_output("I would say a 4.", RATING).answer_line  # the fallback's answer: no line


_TASKS = (RATING, HALF_RATING, LABEL, GENRES, TEXT, RANKING)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(),
        st.lists(st.sampled_from(["<think>", "</think>", "Answer:", "answer：", "(x)", "<a>", "\n", "4", "five",
                                  "Children’s", "Sci–Fi", "[2]", "**", " ", "Final answer -", "9" * 30]),
                 max_size=12).map("".join),
        st.none(), st.integers(), st.binary(max_size=20),
    ),
    task=st.sampled_from(_TASKS),
    candidates=st.one_of(st.none(), st.lists(st.text(min_size=1, max_size=20), max_size=4, unique=True)),
)
def test_any_input_gives_a_result_or_a_reason(text, task, candidates):
    """The documented outcome: an answer of the task's form, or no answer and a reason; never an exception."""
    parsed = parse_output(text, task, candidates=candidates)
    assert isinstance(parsed, ParsedOutput)
    if parsed.ok:
        assert parsed.reason is None and isinstance(parsed.answer, str)
        if task.kind == "label":
            assert parsed.answer in task.labels
        elif task.kind == "rating":
            assert task.min <= float(parsed.answer) <= task.max
        elif task.kind == "ranking":
            assert parsed.answer in candidates
    else:
        assert isinstance(parsed.reason, str) and parsed.reason
        assert not parsed.reason.startswith("parser error"), parsed.reason  # no internal failure either
