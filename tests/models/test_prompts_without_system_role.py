"""A chat template that has no system role (it raises on one, as Gemma's does): the system text opens
the first user turn, and every prompt still renders."""

from __future__ import annotations

import copy

import pytest
from jinja2 import TemplateError

from prime_ray.models.loading import load_tokenizer
from prime_ray.models.prompts import render_profile_prompt, render_prompt
from prime_ray.spec import ModelSpec, PromptMode, PromptTemplates, RatingTask

# The shape of Gemma's template: a system turn is refused with raise_exception.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
TEMPLATES = PromptTemplates(system="SYSTEM-LINE", instruction="INSTRUCTION-LINE", answer_format="FORMAT-LINE")


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = copy.deepcopy(load_tokenizer(ModelSpec(name_or_path="tiny-test")))
    tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    return tokenizer


def test_the_template_really_refuses_a_system_turn(tokenizer):
    with pytest.raises(TemplateError, match="System role not supported"):
        tokenizer.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
                                      tokenize=False)


@pytest.mark.parametrize("mode", list(PromptMode))
def test_the_system_text_opens_the_first_user_turn(tokenizer, mode):
    prompt = render_prompt(tokenizer, mode, task=RatingTask(), templates=TEMPLATES, query_input="The Godfather (1972)",
                           profile="Loves dramas.", hint="4" if mode in (PromptMode.think, PromptMode.personal_think) else None)
    assert prompt.count("<start_of_turn>user\nSYSTEM-LINE\n\nINSTRUCTION-LINE") == 1
    assert prompt.endswith("<start_of_turn>model\n") and "<start_of_turn>system" not in prompt
    assert prompt.index("SYSTEM-LINE") < prompt.index("The Godfather (1972)") < prompt.index("FORMAT-LINE")


def test_profile_prompts_render_too(tokenizer):
    prompt = render_profile_prompt(tokenizer, templates=TEMPLATES, history=(), profile_fields={"age": 30})
    assert "<start_of_turn>user\nSYSTEM-LINE\n\nAbout this user: age: 30" in prompt


def test_an_empty_system_text_adds_nothing(tokenizer):
    prompt = render_prompt(tokenizer, PromptMode.direct, task=RatingTask(), templates=TEMPLATES.model_copy(
        update={"system": "  "}), query_input="q")
    assert "<start_of_turn>user\nINSTRUCTION-LINE" in prompt


def test_a_template_with_a_system_role_keeps_it():
    tokenizer = load_tokenizer(ModelSpec(name_or_path="tiny-test"))
    prompt = render_prompt(tokenizer, PromptMode.direct, task=RatingTask(), templates=TEMPLATES, query_input="q")
    assert prompt.index("SYSTEM-LINE") < prompt.index("INSTRUCTION-LINE")
    assert "SYSTEM-LINE\n\nINSTRUCTION-LINE" not in prompt  # a turn of its own, not folded
