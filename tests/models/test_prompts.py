"""Prompts in each mode, rendered through the tiny model's chat template."""

from __future__ import annotations

import pytest

from prime_ray.data.schema import Item
from prime_ray.models.loading import load_tokenizer
from prime_ray.models.prompts import (
    answer_prefix,
    completion_text,
    generation_prefix,
    render_profile_prompt,
    render_prompt,
)
from prime_ray.spec import LabelTask, ModelSpec, PromptMode, PromptTemplates, RankingTask, RatingTask

TEMPLATES = PromptTemplates(system="SYSTEM-LINE", instruction="INSTRUCTION-LINE", answer_format="FORMAT-LINE")
PROFILE = "Loves slow dramas, dislikes horror."
EPISODES = (
    Item(id="h1", input="Casablanca (1942)", output="5"),
    Item(id="h2", input="Scream (1996)", output="1"),
)
QUERY = "The Godfather (1972)"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSpec(name_or_path="tiny-test"))


def _render(tokenizer, mode, **kwargs):
    args = {"task": RatingTask(), "templates": TEMPLATES, "query_input": QUERY, "profile": PROFILE, "episodes": EPISODES}
    args.update(kwargs)
    return render_prompt(tokenizer, mode, **args)


@pytest.mark.parametrize("mode", list(PromptMode))
def test_every_mode_renders_through_the_chat_template(tokenizer, mode):
    prompt = _render(tokenizer, mode)
    assert prompt.startswith("<|im_start|>system\nSYSTEM-LINE<|im_end|>\n<|im_start|>user\n")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    for part in ("INSTRUCTION-LINE", QUERY, "FORMAT-LINE", "a whole number from 1 to 5"):
        assert part in prompt
    assert ("<think>" in prompt) == (mode in (PromptMode.think, PromptMode.personal_think))
    assert generation_prefix(mode) == ("<think>\n" if "<think>" in prompt else "")


def test_memory_appears_only_in_the_personal_modes(tokenizer):
    for mode in PromptMode:
        prompt = _render(tokenizer, mode)
        has_memory = mode in (PromptMode.personal_direct, PromptMode.personal_think)
        assert (PROFILE in prompt) is has_memory
        assert ("Casablanca (1942) -> 5" in prompt) is has_memory
        assert ("Scream (1996) -> 1" in prompt) is has_memory
    generic, personal = _render(tokenizer, PromptMode.think), _render(tokenizer, PromptMode.personal_think)
    assert "step by step" in generic and "profile and past items" in personal


def test_personal_think_without_memory_has_no_empty_sections(tokenizer):
    prompt = _render(tokenizer, PromptMode.personal_think, profile=None, episodes=())
    assert "About this user" not in prompt and "past items (input" not in prompt


def test_hint_makes_a_rationalization_prompt(tokenizer):
    plain = _render(tokenizer, PromptMode.personal_think)
    hinted = _render(tokenizer, PromptMode.personal_think, hint="4")
    assert "real answer is: 4" in hinted and "real answer" not in plain
    assert "Do not say that the answer was given" in hinted
    assert PROFILE in hinted  # the reasoning is anchored on the same memory
    generic = _render(tokenizer, PromptMode.think, hint="4")
    assert "real answer is: 4" in generic and PROFILE not in generic
    with pytest.raises(ValueError, match="think mode"):
        _render(tokenizer, PromptMode.direct, hint="4")
    with pytest.raises(ValueError, match="think mode, not 'personal-direct'"):
        _render(tokenizer, PromptMode.personal_direct, hint="4")


def test_task_answer_instructions(tokenizer):
    label = _render(tokenizer, PromptMode.direct, task=LabelTask(labels=["Comedy", "Drama"]))
    assert "exactly one of these labels: Comedy, Drama." in label
    half = _render(tokenizer, PromptMode.direct, task=RatingTask(min=0, max=10, integer=False))
    assert "a number from 0 to 10." in half
    ranking = _render(tokenizer, PromptMode.direct, task=RankingTask(), candidates=["Reply A", "Reply B"])
    assert "[1] Reply A\n[2] Reply B" in ranking and "text of the one candidate" in ranking


def test_long_items_are_clipped_and_prompts_fit_the_tiny_context(tokenizer):
    long_item = Item(id="h9", input="word " * 400, output="3")
    prompt = _render(tokenizer, PromptMode.personal_think, episodes=(long_item,) * 4, profile="likes " * 40)
    without_episodes = _render(tokenizer, PromptMode.personal_think, episodes=(), profile="likes " * 40)
    assert prompt.count("…") == 4 and len(prompt) < len(without_episodes) + 60 + 4 * 310
    n_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert n_tokens + 128 <= 2048, n_tokens  # the tiny model's context


def test_profile_prompt(tokenizer):
    prompt = render_profile_prompt(tokenizer, templates=TEMPLATES, history=EPISODES, profile_fields={"age": 24, "occupation": "writer"})
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "age: 24, occupation: writer" in prompt and "Casablanca (1942) -> 5" in prompt
    assert "Summarize this user's tastes" in prompt and "<think>" not in prompt
    bare = render_profile_prompt(tokenizer, templates=TEMPLATES, history=EPISODES, profile_fields={})
    assert "About this user" not in bare


def test_completion_text():
    assert completion_text("4") == "Answer: 4"
    assert completion_text(" Drama ", trace="  They like drama.\n") == "<think>\nThey like drama.\n</think>\nAnswer: Drama"


def test_answer_prefix_is_the_completion_up_to_the_answer_marker():
    assert answer_prefix(" They like drama.\n") == "<think>\nThey like drama.\n</think>\nAnswer:"
    assert answer_prefix("") == "<think>\n\n</think>\nAnswer:"  # an empty think block, not none
    assert answer_prefix(None) == "Answer:"
    assert (answer_prefix("x") + " Drama") == completion_text("Drama", "x")
