"""Prompts for the four modes, rendered with the model's chat template, and the completions the
student is trained on.

    direct           the query only; answer at once
    personal-direct  the user's memory (profile + retrieved episodes) and the query; answer at once
    think            the query only; reason step by step, then answer
    personal-think   the user's memory and the query; reason about this user, then answer

Completion format (what G is asked to write, what the student learns, what the parser reads):
    direct / personal-direct:  "Answer: <answer>"
    think / personal-think:    "<think>\n<reasoning>\n</think>\nAnswer: <answer>"

In think modes the generation starts inside the think block (`generation_prefix`): the prompt ends
with "<think>\n", so every think-mode answer has a trace to measure (an empty one when the model
closes the block at once).

The answer is written the way the parser returns it: a label of the set, a number, the text, or — for
ranking — the chosen candidate's text (the candidates are numbered in the prompt; the parser also
accepts the number and maps it back to the text).

Prompts are short on purpose: the default generalist is a 135M model on CPU and the test model has a
small context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError  # what a chat template's raise_exception(...) raises in transformers

from prime_ray.data.schema import Item
from prime_ray.spec import PromptMode, PromptTemplates, TaskSpec
from prime_ray.tasks import task_kind

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ANSWER_PREFIX",
    "THINK_CLOSE",
    "THINK_OPEN",
    "PERSONAL_MODES",
    "THINK_MODES",
    "answer_prefix",
    "completion_text",
    "generation_prefix",
    "render_profile_prompt",
    "render_prompt",
    "task_answer_instruction",
]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_PREFIX = "Answer:"

# The modes whose prompt holds the user's memory, and those that ask for reasoning first.
PERSONAL_MODES = frozenset({PromptMode.personal_direct, PromptMode.personal_think})
THINK_MODES = frozenset({PromptMode.think, PromptMode.personal_think})

# Long inputs (reviews, posts) are cut in the prompt so a handful of episodes fits a small context.
DEFAULT_MAX_ITEM_CHARS = 300

_THINK_INSTRUCTION = {
    PromptMode.think: "Think step by step inside <think> and </think>, then answer.",
    PromptMode.personal_think: (
        "Inside <think> and </think>, reason about what this user's profile and past items say about "
        "this input, then answer."
    ),
}


def task_answer_instruction(task: TaskSpec) -> str:
    """What the answer must look like for the task, as one sentence (the task kind's)."""
    return task_kind(task).answer_instruction(task)


def generation_prefix(mode: PromptMode) -> str:
    """What a generation in `mode` starts with, written after the prompt: "<think>\n" in think modes.

    Trace synthesis starts inside the think block the same way; the parser reads the prefix and the
    generated text together (`generation_prefix(mode) + text`).
    """
    return THINK_OPEN + "\n" if PromptMode(mode) in THINK_MODES else ""


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _candidates_block(candidates: Sequence[str], limit: int) -> str:
    return "Candidates:\n" + "\n".join(f"[{i}] {_clip(c, limit)}" for i, c in enumerate(candidates, 1))


def _episodes_block(episodes: Sequence[Item], limit: int) -> str:
    lines = [f"- {_clip(item.input, limit)} -> {_clip(item.output, limit)}" for item in episodes]
    return "This user's past items (input -> their output):\n" + "\n".join(lines)


def _chat(tokenizer: PreTrainedTokenizerBase, system: str, user: str) -> str:
    """One system and one user turn through the model's chat template, with the generation prompt.

    Some templates have no system role and raise on one (Gemma's: "System role not supported"): then
    the system text opens the user turn instead, as those models' own documentation advises.
    """
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        return _template_text(tokenizer, messages)
    except TemplateError:
        folded = [{"role": "user", "content": f"{system.strip()}\n\n{user}" if system.strip() else user}]
        return _template_text(tokenizer, folded)


def _template_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text  # type: ignore[return-value]  # tokenize=False gives a str; the hint is every output's union


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    mode: PromptMode,
    *,
    task: TaskSpec,
    templates: PromptTemplates,
    query_input: str,
    candidates: Sequence[str] | None = None,
    profile: str | None = None,
    episodes: Sequence[Item] = (),
    hint: str | None = None,
    max_item_chars: int = DEFAULT_MAX_ITEM_CHARS,
) -> str:
    """The full prompt text (chat template applied, generation prompt added) for one example.

    `profile` and `episodes` are used only in the personal modes (personal-direct, personal-think).
    `hint` (the gold answer) makes it a rationalization prompt: write the reasoning (from this user's
    memory in personal-think) that leads to this answer, without saying the answer was given. A hint
    needs a think mode. The prompt does not hold `generation_prefix(mode)`: callers that generate add it.
    """
    mode = PromptMode(mode)
    if hint is not None and mode not in THINK_MODES:
        raise ValueError(f"a hint (rationalization) needs a think mode, not {mode.value!r}")
    parts = [templates.instruction]
    if mode in PERSONAL_MODES:
        if profile:
            parts.append(f"About this user: {profile.strip()}")
        if episodes:
            parts.append(_episodes_block(episodes, max_item_chars))
    parts.append(f"Input: {query_input.strip()}")
    if candidates:
        parts.append(_candidates_block(candidates, max_item_chars))
    if hint is not None:
        source = "this user's profile and past items" if mode == PromptMode.personal_think else "the input"
        parts.append(
            f"This user's real answer is: {hint.strip()}\n"
            f"Inside <think> and </think>, write the reasoning from {source} that leads to this answer, "
            "as if you worked it out yourself. Do not say that the answer was given to you. "
            "Then answer."
        )
    elif mode in THINK_MODES:
        parts.append(_THINK_INSTRUCTION[mode])
    parts.append(task_answer_instruction(task))
    parts.append(templates.answer_format)
    return _chat(tokenizer, templates.system, "\n\n".join(parts))


def render_profile_prompt(
    tokenizer: PreTrainedTokenizerBase,
    *,
    templates: PromptTemplates,
    history: Sequence[Item],
    profile_fields: Mapping[str, Any],
    max_item_chars: int = DEFAULT_MAX_ITEM_CHARS,
) -> str:
    """Ask G for a short summary of the user's tastes from their history (semantic memory).

    The completion is the summary itself (no think block, no answer line).
    """
    parts = []
    if profile_fields:
        parts.append("About this user: " + ", ".join(f"{k}: {v}" for k, v in profile_fields.items()))
    if history:
        parts.append(_episodes_block(history, max_item_chars))
    parts.append(
        "Summarize this user's tastes and habits in two or three sentences. "
        "Write only the summary."
    )
    return _chat(tokenizer, templates.system, "\n\n".join(parts))


def completion_text(answer: str, trace: str | None = None) -> str:
    """The target completion: `Answer: y`, or the think block then `Answer: y`."""
    answer_line = f"{ANSWER_PREFIX} {answer.strip()}"
    if trace is None:
        return answer_line
    return f"{THINK_OPEN}\n{trace.strip()}\n{THINK_CLOSE}\n{answer_line}"


def answer_prefix(trace: str | None) -> str:
    """The completion up to `Answer:` (inclusive), with the trace in a closed think block when given.

    What a model completes to give its answer after the reasoning `trace` (`""`: an empty think
    block; None: no think block, a direct answer). Trace synthesis asks for the hint-free answer with
    it, and the eval forces an answer after thinking that ran out of tokens with it.
    """
    full = completion_text("x", trace)
    return full[: -len("x")].rstrip()
