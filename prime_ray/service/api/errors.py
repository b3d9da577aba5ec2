"""Error answers: every 4xx/5xx is a JSON ErrorOut, whatever raised it."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from prime_ray.service.db import DatabaseUnavailable
from prime_ray.service.models import ErrorOut
from prime_ray.service.validation import ApiError, printable  # noqa: F401 - ApiError is raised by the routes
from prime_ray.spec import SpecProblem

log = logging.getLogger("prime_ray.gateway")

MEANING = {
    401: "No API key, or not a live one.",
    403: "The API key is read-only.",
    404: "No such job (or artifact).",
    409: "Conflict with the job's state (or with an earlier use of the Idempotency-Key).",
    413: "The request body is larger than the gateway accepts.",
    415: "The body is neither JSON nor YAML.",
    422: "Invalid input: every problem, by its path.",
    503: "The Ray Jobs API or the job database cannot be reached (retry after `Retry-After` seconds).",
    504: "The served student did not answer in time.",
}


def errors(*codes: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all of them an ErrorOut).

    `meanings` overrides a code's description for one route: `errors(404, e404="No such user.")`.
    """
    return {code: {"model": ErrorOut, "description": meanings.get(f"e{code}", MEANING[code])} for code in codes}


def validation_problems(exc: RequestValidationError) -> list[SpecProblem]:
    return [SpecProblem(path=".".join(str(p) for p in err["loc"]), message=err["msg"]) for err in exc.errors()]


def answer(status: int, detail: str, problems: list[SpecProblem] | None = None,
           headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    """The JSON error answer: an ErrorOut (plus `extra` keys some clients look for)."""
    # Details and problems may quote a client's input: lone surrogates are escaped so the answer encodes.
    problems = [SpecProblem(path=printable(p.path), message=printable(p.message)) for p in problems or []]
    body = ErrorOut(detail=printable(detail), problems=problems)
    return JSONResponse({**body.model_dump(), **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.detail, exc.problems, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(422, "invalid request", validation_problems(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(DatabaseUnavailable)
    async def _database_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return answer(503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return answer(500, f"internal error: {type(exc).__name__}")
