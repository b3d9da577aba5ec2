"""OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models` over the served students.

A model is `<job id>/<adapter>` (`/prime`, `/fast`, `/generalist`); the request's `user` names the user
whose memory is used and the last user message is the input. The reply is a `chat.completion` whose
message is the student's whole completion (think block and answer line); the parsed answer, trace
and the memory used come along in the extra `prime_ray` field. Works with the official `openai`
client: `OpenAI(base_url=f"{gateway}/v1", api_key=<prime-ray key>)`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from prime_ray.service.api.deps import DeploymentsDep, StoreDep
from prime_ray.service.api.errors import ApiError, answer, errors, validation_problems
from prime_ray.service.api.routes.students import forward
from prime_ray.service.store import JobNotFound
from prime_ray.serving.schemas import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    Prediction,
    PredictRequest,
    Usage,
)
from prime_ray.spec import SpecProblem


class OpenAIErrors(APIRoute):
    """Error answers that OpenAI clients can read: the gateway's ErrorOut plus OpenAI's `error` object
    (`message`, `type`, `param`, `code`), so the client's exception says what went wrong."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                return _openai_error(e.status, e.detail, e.problems, e.headers)
            except RequestValidationError as e:
                return _openai_error(422, "invalid request", validation_problems(e), None)

        return route


def _openai_error(status: int, detail: str, problems: list[SpecProblem], headers: dict[str, str] | None) -> Response:
    kind = {401: "authentication_error", 403: "permission_error"}.get(status, "invalid_request_error")
    message = detail + "".join(f"; {p}" for p in problems if str(p) not in detail)
    error = {"message": message, "type": kind, "param": problems[0].path if problems else None, "code": status}
    return answer(status, detail, problems, headers, error=error)


router = APIRouter(tags=["openai"], route_class=OpenAIErrors)


def _problem(path: str, message: str) -> ApiError:
    return ApiError(422, f"invalid request: {path}: {message}", [SpecProblem(path=path, message=message)])


def _last_user_text(request: ChatCompletionRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, list):  # content parts: keep the text ones
                content = "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
            if content and content.strip():
                return content
            break
    raise _problem("body.messages", "needs a user message with text: it is the input")


@router.post("/chat/completions", response_model=ChatCompletion, operation_id="chatCompletions",
             summary="OpenAI-compatible chat completion by a served student",
             responses=errors(404, 409, 422, 503, e404="No such model (job or adapter): the known ones are listed."))
async def chat_completions(body: ChatCompletionRequest, store: StoreDep, deployments: DeploymentsDep) -> ChatCompletion:
    if body.stream:
        raise _problem("body.stream", "streaming is not offered: send false")
    if not body.user:
        raise _problem("body.user", "names the user whose memory the student uses")
    job_id, _, adapter = body.model.rpartition("/")
    if not job_id or not adapter:
        raise ApiError(404, f"no model {body.model!r}: models are named <job id>/<adapter> (GET /v1/models)")
    try:
        job = await run_in_threadpool(store.get, job_id)
    except JobNotFound:
        raise ApiError(404, f"no model {body.model!r}: there is no job {job_id!r}") from None
    if job.state != "succeeded":
        raise ApiError(409, f"job {job.id} is {job.state}: only a succeeded job's student can be served")
    request = PredictRequest(
        user_id=body.user, input=_last_user_text(body), adapter=adapter,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature or 0.0, top_p=body.top_p or 1.0, seed=body.seed,
    )
    answer = Prediction.model_validate(await forward(deployments, job, "POST", "/predict", request.model_dump(mode="json")))
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model,
        choices=[ChatChoice(message=ChatChoiceMessage(content=answer.text), finish_reason=answer.finish_reason)],
        usage=Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                    total_tokens=answer.prompt_tokens + answer.completion_tokens),
        prime_ray=answer,
    )


@router.get("/models", response_model=ModelList, operation_id="listModels",
            summary="The served students' model names (OpenAI-compatible)")
def list_models(store: StoreDep, deployments: DeploymentsDep) -> ModelList:
    """Every adapter of every job whose student is deployed and ready, as `<job id>/<adapter>`."""
    cards = []
    for job in store.deployed():
        record = job.deployment or {}
        if record.get("state") == "ready":
            created = int(job.finished_at.timestamp()) if job.finished_at else int(record.get("updated_at", 0))
            cards += [ModelCard(id=name, created=created) for name in record.get("models", [])]
    return ModelList(data=cards)
