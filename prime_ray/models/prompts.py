"""Prompts for the three modes, rendered with the model's chat template, and the completions the
student is trained on. (Interface; the model-layer work fills it in.)

Completion format (what G is asked to write, what the student learns, what the parser reads):
    direct:                    "Answer: <answer>"
    think / personal-think:    "<think>\n<reasoning>\n</think>\nAnswer: <answer>"
"""

from __future__ import annotations

from typing import Sequence

from prime_ray.data.schema import Item
from prime_ray.spec import PromptMode, PromptTemplates, TaskSpec


def render_prompt(
    tokenizer,
    mode: PromptMode,
    *,
    task: TaskSpec,
    templates: PromptTemplates,
    query_input: str,
    candidates: Sequence[str] | None = None,
    profile: str | None = None,
    episodes: Sequence[Item] = (),
    hint: str | None = None,
) -> str:
    """The full prompt text (chat template applied, generation prompt added) for one example.

    `profile` and `episodes` are used only in personal-think mode. `hint` (the gold answer) makes it a
    rationalization prompt: write the reasoning from this user's memory that leads to this answer.
    """
    raise NotImplementedError


def render_profile_prompt(tokenizer, *, templates: PromptTemplates, history: Sequence[Item], profile_fields: dict) -> str:
    """Ask G for a short summary of the user's tastes from their history (semantic memory)."""
    raise NotImplementedError


def completion_text(answer: str, trace: str | None = None) -> str:
    """The target completion: `Answer: y`, or the think block then `Answer: y`."""
    raise NotImplementedError
