"""What a caller sends to a served student and what it gets back (REST, Serve app and SDK alike).

Light on purpose (pydantic and prime-ray's data model): the SDK imports it.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The adapters a served job offers: its two students and the bare base model.
GENERALIST = "generalist"
ADAPTERS = ("prime", "fast", GENERALIST)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryItemIn(_In):
    """A past item of the user: an input and the output they gave."""

    id: str | None = Field(None, min_length=1, max_length=200,
                           description="Unique within the user's history; assigned (`added-<n>`) when left out.")
    input: str = Field(..., min_length=1, max_length=20_000)
    output: str = Field(..., max_length=20_000, description="The user's rating, label, text or chosen candidate.")
    timestamp: int | None = Field(None, description="Seconds since the epoch; orders the user's items.")
    candidates: list[str] | None = Field(None, description="Ranking tasks: the options; `output` is one of them.")


class PredictRequest(_In):
    """One question for a served student, about one user."""

    user_id: str = Field(..., min_length=1, max_length=200,
                         description="A user of the job's data, or any id when `history` is given inline.")
    input: str = Field(..., min_length=1, max_length=100_000, description="The new input (query) to answer for the user.")
    history: list[HistoryItemIn] | None = Field(
        None, max_length=1000,
        description="A user not seen in training: their history, used as memory for this request only.",
    )
    candidates: list[str] | None = Field(None, description="Ranking tasks: the options to choose from.")
    adapter: str = Field("prime", description="`prime` (the PRIME student), `fast` (the fast-thinking student) "
                                              "or `generalist` (the base model without adapter).")
    mode: str | None = Field(
        None, description="Prompt mode: `personal-think` (default for prime and generalist), `direct` (default for "
                          "fast), `think`, or another mode the job's prompts know.")
    max_new_tokens: int | None = Field(None, gt=0, le=4096, description="Default: the job's `eval.max_new_tokens`.")
    temperature: float = Field(0.0, ge=0, le=5, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"user_id": "u17", "input": "Toy Story (1995) | Animation, Comedy"},
    ]})


class Episode(BaseModel):
    """A history item retrieved as episodic memory, with the retriever's score."""

    id: str
    input: str
    output: str
    score: float


class Prediction(BaseModel):
    """A served student's answer for one user and input."""

    job_id: str
    user_id: str
    adapter: str = Field(description="Which model answered: prime, fast or generalist.")
    mode: str = Field(description="The prompt mode used.")
    text: str = Field(description="The whole completion, as generated.")
    trace: str | None = Field(None, description="The reasoning inside <think>…</think>, if the model wrote one.")
    answer: str | None = Field(None, description="The answer parsed with the job's task; null when unparseable.")
    parse_error: str | None = Field(None, description="Why no answer could be parsed.")
    profile: str | None = Field(None, description="The user's profile summary put in the prompt (semantic memory).")
    episodes: list[Episode] = Field(default_factory=list, description="The retrieved history items put in the prompt.")
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "job-3f9a1c2b7d4e", "user_id": "u17", "adapter": "prime", "mode": "personal-think",
        "text": "<think>\nThey rate comedies high.\n</think>\nAnswer: 4", "trace": "They rate comedies high.",
        "answer": "4", "parse_error": None, "profile": "Likes light comedies.",
        "episodes": [{"id": "h3", "input": "Aladdin (1992)", "output": "5", "score": 2.1}],
        "prompt_tokens": 212, "completion_tokens": 14, "finish_reason": "stop",
    }]})


class HistoryAppend(_In):
    """New items for a known user's memory (no retraining)."""

    items: list[HistoryItemIn] = Field(..., min_length=1, max_length=1000)
    refresh_profile: bool = Field(False, description="Rewrite the user's profile summary from the grown history "
                                                     "with the base model (semantic memory).")


class HistoryAppended(BaseModel):
    job_id: str
    user_id: str
    added: list[str] = Field(description="The ids of the items added.")
    history_items: int = Field(description="Items in the user's memory now.")
    profile: str | None = Field(None, description="The user's profile now.")


class StudentInfo(BaseModel):
    """What a served job offers."""

    job_id: str
    adapters: list[str]
    users: int = Field(description="Users with a memory (those of the job's data, plus none added).")
    context_tokens: int = Field(description="The model's context: prompt plus new tokens must fit in it.")
    task: dict[str, Any]


class DeploymentOut(BaseModel):
    """A job's served student on the gateway's Ray cluster."""

    state: Literal["deploying", "ready", "failed", "stopping"]
    url: str | None = Field(None, description="The Serve app's HTTP address, once ready.")
    models: list[str] = Field(default_factory=list, description="OpenAI-compatible model names (`<job>/<adapter>`).")
    error: str | None = None
    submission_id: str | None = Field(None, description="The Ray job that deploys or removes it.")
    updated_at: float = Field(default_factory=time.time)


# ------------------------------------------------------------------------- OpenAI-compatible


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat-completions request a served student honours (other fields are ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(..., description="`<job id>/<adapter>`, e.g. `job-3f9a1c2b7d4e/prime`.")
    messages: list[ChatMessage] = Field(..., min_length=1, description="The last user message is the input.")
    user: str | None = Field(None, description="The user whose memory is used (a user of the job's data).")
    max_tokens: int | None = Field(None, gt=0, le=4096)
    max_completion_tokens: int | None = Field(None, gt=0, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stream: bool = Field(False, description="Streaming is not offered: false only.")


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prime_ray: Prediction = Field(description="prime-ray's answer: the parsed trace and answer, the memory used.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "prime-ray"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
