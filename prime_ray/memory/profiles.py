"""Semantic memory: a short summary of each user's tastes, written once by the generalist.

Profiles are decoded greedily, so the same model and history always give the same profile, and they
are cached per user in the memory table (every example of a user shares it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from prime_ray.data.schema import Item, UserRecord
from prime_ray.engine.base import Generation, SamplingParams
from prime_ray.models.prompts import render_profile_prompt
from prime_ray.spec import MemorySpec, ModelSpec, PromptTemplates

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Generalist(Protocol):
    """What memory and trace synthesis need from G: an engine, or the Serve deployment's handle."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]: ...

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]: ...


def latest_items(history: Sequence[Item], n: int) -> list[Item]:
    """The user's latest n items in time order (history order where timestamps are missing)."""
    order = sorted(
        range(len(history)),
        key=lambda i: (history[i].timestamp is None, history[i].timestamp or 0, i),
    )
    return [history[i] for i in order[-n:]]


def profile_params(memory: MemorySpec, seed: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=memory.profile_max_new_tokens, temperature=0.0, seed=seed)


def profile_prompt(tokenizer: PreTrainedTokenizerBase, user: UserRecord, templates: PromptTemplates, memory: MemorySpec) -> str:
    return render_profile_prompt(
        tokenizer,
        templates=templates,
        history=latest_items(user.history, memory.profile_history_items),
        profile_fields=user.profile,
    )


def clean_profile(text: str) -> str:
    """The summary as one paragraph: a think block, stray think tags and blank runs removed."""
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL)
    text = re.sub(r"</?think>", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def write_profiles(
    generalist: Generalist,
    tokenizer,
    users: Sequence[UserRecord],
    templates: PromptTemplates,
    memory: MemorySpec,
    seed: int,
) -> tuple[dict[str, str], list[Generation]]:
    """user_id -> profile for every user with a history (one generalist call for all of them)."""
    with_history = [u for u in users if u.history]
    prompts = [profile_prompt(tokenizer, u, templates, memory) for u in with_history]
    generations = generalist.generate(prompts, profile_params(memory, seed)) if prompts else []
    return {u.user_id: clean_profile(g.text) for u, g in zip(with_history, generations)}, generations


class ProfileConfig(BaseModel):
    """What a profile writer needs from the job's spec."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model: ModelSpec = Field(description="The generalist (its tokenizer renders the prompts).")
    prompts: PromptTemplates = Field(description="The prompt templates (the profile prompt's system line).")
    memory: MemorySpec = Field(description="Profile length and the history items shown.")
    seed: int = Field(description="The job's seed (profiles are greedy; the seed is kept on the request).")


class ProfileWriter:
    """A worker: rows `{"user_id", "user": UserRecord dict}` -> `{"user_id", "profile", "completion_tokens"}`
    for each user with a history, all of a call's users in one generalist request batch."""

    config_type = ProfileConfig
    required_keys = ("user",)

    def __init__(self, generalist: Generalist, config: ProfileConfig, tokenizer=None):
        if tokenizer is None:
            from prime_ray.models.loading import load_tokenizer

            tokenizer = load_tokenizer(config.model)
        self.g, self.config, self.tokenizer = generalist, config, tokenizer

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        users = [UserRecord.model_validate(r["user"]) for r in rows]
        c = self.config
        profiles, generations = write_profiles(self.g, self.tokenizer, users, c.prompts, c.memory, c.seed)
        tokens = iter(g.completion_tokens for g in generations)
        return [{"user_id": u, "profile": p, "completion_tokens": next(tokens)} for u, p in profiles.items()]
