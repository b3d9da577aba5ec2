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
from prime_ray.spec import MemorySpec, PromptTemplates

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


def profile_rows(tokenizer: PreTrainedTokenizerBase, users: Sequence[UserRecord], templates: PromptTemplates,
                 memory: MemorySpec) -> list[dict[str, str]]:
    """`ProfileWriter` rows `{"user_id", "prompt"}`: one per user with a history (the others get no profile)."""
    return [{"user_id": u.user_id, "prompt": profile_prompt(tokenizer, u, templates, memory)} for u in users if u.history]


class ProfileConfig(BaseModel):
    """How a profile writer decodes."""

    model_config = ConfigDict(frozen=True)

    memory: MemorySpec = Field(description="The job's memory section: the profile's token budget.")
    seed: int = Field(description="The job's seed (profiles are greedy; the seed is kept on the request).")


class ProfileWriter:
    """A worker: rows `{"user_id", "prompt"}` (`profile_rows`, rendered on the driver, so the Ray Data
    workers load no tokenizer) -> `{"user_id", "profile", "completion_tokens"}`, all of a call's users
    in one generalist request."""

    config_type = ProfileConfig
    required_keys = ("prompt",)

    def __init__(self, generalist: Generalist, config: ProfileConfig):
        self.g, self.params = generalist, profile_params(config.memory, config.seed)

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        generations = self.g.generate([r["prompt"] for r in rows], self.params) if rows else []
        return [{"user_id": r["user_id"], "profile": clean_profile(g.text), "completion_tokens": g.completion_tokens}
                for r, g in zip(rows, generations)]
