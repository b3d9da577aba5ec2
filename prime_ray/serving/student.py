"""A finished job's students, ready to answer: one base model, its LoRA adapters, the job's memory.

    student = ServedStudent.load("artifacts/demo")            # the job's folder
    student.predict([PredictRequest(user_id="u17", input="Toy Story (1995)")])

- **One base model, adapters selected per request.** The base model is loaded once through the
  transformers engine (`HFEngine`) with the job's adapters by name (`prime`: train/prime/adapter,
  `fast`: train/fast/adapter); `generalist` is the model without them. A batch of requests is grouped
  by (adapter, sampling parameters): one engine call per group, its adapter merged into the weights
  for that call (`engine.adapters.MergedAdapters`), so users share batches and no adapter needs its
  own copy of the model.
- **The prompt the job trained and evaluated with**: `render_prompt` with the job's task and templates;
  in personal modes, the user's profile and their top-k episodes for the input (`ServingMemory`).
- **The answer** parsed with the job's task (`parse_output`).

Errors a caller can cause are `ServingError`s with an HTTP status: unknown adapter or user (404),
an input that does not fit the model's context or a mode the prompts do not know (422).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prime_ray.data.schema import Item
from prime_ray.engine.base import Generation, SamplingParams
from prime_ray.engine.hf import HFEngine
from prime_ray.memory.profiles import clean_profile, profile_params, profile_prompt
from prime_ray.models.loading import load_tokenizer
from prime_ray.models.parser import parse_output
from prime_ray.models.prompts import render_prompt
from prime_ray.serving.memory import DuplicateItem, ServingMemory, UnknownUser
from prime_ray.serving.schemas import (
    GENERALIST,
    Episode,
    HistoryAppend,
    HistoryAppended,
    HistoryItemIn,
    Prediction,
    PredictRequest,
    StudentInfo,
)
from prime_ray.spec import JobSpec, PromptMode, SpecProblem, load_spec
from prime_ray.training.artifacts import trained_adapters

DEFAULT_MODE = {"prime": PromptMode.personal_think, "fast": PromptMode.direct, GENERALIST: PromptMode.personal_think}


class ServingError(Exception):
    """A caller's mistake, answered with `status` (404 or 422) and `detail` (and `problems` by field)."""

    status = 422

    def __init__(self, detail: str, problems: list[SpecProblem] | None = None):
        super().__init__(detail)
        self.detail, self.problems = detail, problems or []


class NotFoundError(ServingError):
    status = 404


@dataclass(frozen=True)
class Prepared:
    """A request turned into a prompt: everything needed to generate and to answer."""

    request: PredictRequest
    adapter: str
    mode: PromptMode
    prompt: str
    prompt_tokens: int
    params: SamplingParams
    profile: str | None
    episodes: tuple[Episode, ...]


def job_adapters(job_dir: Path) -> dict[str, Path]:
    """The students a job trained: name -> adapter folder (PEFT format), in STUDENTS order."""
    return trained_adapters(Path(job_dir) / "train")


class ServedStudent:
    """A job's base model with its adapters and its users' memory (plain Python: Serve wraps it)."""

    def __init__(self, job_dir: str | Path, spec: JobSpec, *, device: str = "auto", max_batch_size: int = 16):
        self.job_dir = Path(job_dir)
        self.spec = spec
        self.job_id = spec.name
        self.adapter_dirs = job_adapters(self.job_dir)
        self.engine = HFEngine(model=spec.model, device=device, max_batch_size=max_batch_size, adapters=self.adapter_dirs)
        self.tokenizer = load_tokenizer(spec.model)
        config = self.engine.model.config
        self.context_tokens = int(getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length)
        self.memory = ServingMemory(self.job_dir, spec)
        self._engine_lock = threading.Lock()  # one engine call at a time: adapters are merged into the weights

    @classmethod
    def load(cls, job_dir: str | Path, **kwargs: Any) -> ServedStudent:
        """The student of the job whose artifact folder is `job_dir` (it holds the job's spec.json)."""
        job_dir = Path(job_dir)
        if not (job_dir / "spec.json").is_file():
            raise FileNotFoundError(f"{job_dir} is not a job's artifact folder (no spec.json)")
        spec = load_spec(job_dir / "spec.json")
        if not job_adapters(job_dir):
            raise FileNotFoundError(f"job {spec.name} has no trained adapter under {job_dir / 'train'}: "
                                    "serve a job whose train stage has finished")
        return cls(job_dir, spec, **kwargs)

    @property
    def adapters(self) -> list[str]:
        return [*self.adapter_dirs, GENERALIST]

    def info(self) -> StudentInfo:
        return StudentInfo(job_id=self.job_id, adapters=self.adapters, users=len(self.memory.users),
                           context_tokens=self.context_tokens, task=self.spec.data.task.model_dump(mode="json"))

    # ----------------------------------------------------------------------------- predict

    def prepare(self, request: PredictRequest) -> Prepared:
        """Check the request, recall the user's memory, render the prompt (ServingError on bad input)."""
        if request.adapter not in self.adapters:
            raise NotFoundError(f"job {self.job_id} has no adapter {request.adapter!r}; known: "
                                f"{', '.join(self.adapters)}", [SpecProblem(path="adapter", message="unknown adapter")])
        try:
            mode = PromptMode(request.mode) if request.mode else DEFAULT_MODE[request.adapter]
        except ValueError:
            known = ", ".join(m.value for m in PromptMode)
            raise ServingError(f"unknown mode {request.mode!r}; known: {known}",
                               [SpecProblem(path="mode", message=f"must be one of {known}")]) from None
        personal = mode.value.startswith("personal")
        profile: str | None = None
        episodes: tuple[Item, ...] = ()
        scores: tuple[float, ...] = ()
        if personal or not self.memory.known(request.user_id):
            try:
                history = _items(request.history, "history") if request.history is not None else None
                recalled = self.memory.recall(request.user_id, request.input, history)
            except UnknownUser as e:
                raise NotFoundError(str(e), [SpecProblem(path="user_id", message="unknown user")]) from None
            if personal:
                profile, episodes, scores = recalled.profile, recalled.episodes, recalled.scores
        prompt = render_prompt(self.tokenizer, mode, task=self.spec.data.task, templates=self.spec.data.prompts,
                               query_input=request.input, candidates=request.candidates, profile=profile,
                               episodes=episodes)
        prompt_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        max_new = request.max_new_tokens or self.spec.eval.max_new_tokens
        if prompt_tokens + max_new > self.context_tokens:
            raise ServingError(
                f"the prompt is {prompt_tokens} tokens and {max_new} new tokens are asked for: more than the "
                f"model's context of {self.context_tokens} tokens",
                [SpecProblem(path="input", message=f"too long: prompt + max_new_tokens must be at most "
                                                   f"{self.context_tokens} tokens")])
        params = SamplingParams(max_new_tokens=max_new, temperature=request.temperature, top_p=request.top_p,
                                seed=request.seed)
        return Prepared(request, request.adapter, mode, prompt, prompt_tokens, params, profile,
                        tuple(Episode(id=i.id, input=i.input, output=i.output, score=s) for i, s in zip(episodes, scores)))

    def generate(self, prepared: Sequence[Prepared]) -> list[Generation]:
        """One generation per prepared request: one engine call per (adapter, sampling parameters)."""
        groups: dict[tuple[str, SamplingParams], list[int]] = defaultdict(list)
        for i, p in enumerate(prepared):
            groups[(p.adapter, p.params)].append(i)
        out: dict[int, Generation] = {}
        for (adapter, params), idx in groups.items():
            for i, generation in zip(idx, self.generate_with(adapter, [prepared[i].prompt for i in idx], params)):
                out[i] = generation
        return [out[i] for i in range(len(prepared))]  # every index is in one group

    def generate_with(self, adapter: str, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """The engine's generation with `adapter` active (`generalist`: the base model)."""
        with self._engine_lock:
            return self.engine.generate(prompts, params, None if adapter == GENERALIST else adapter)

    def answer(self, p: Prepared, generation: Generation) -> Prediction:
        parsed = parse_output(generation.text, self.spec.data.task, p.request.candidates)
        return Prediction(
            job_id=self.job_id, user_id=p.request.user_id, adapter=p.adapter, mode=p.mode.value,
            text=generation.text, trace=parsed.trace, answer=parsed.answer, parse_error=parsed.reason,
            profile=p.profile, episodes=list(p.episodes), prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens, finish_reason=generation.finish_reason,
        )

    def predict(self, requests: Sequence[PredictRequest]) -> list[Prediction]:
        """In-process prediction of a batch of requests (the Serve app batches requests into this shape)."""
        prepared = [self.prepare(r) for r in requests]
        return [self.answer(p, g) for p, g in zip(prepared, self.generate(prepared))]

    # ------------------------------------------------------------------------------ memory

    def append_history(self, user_id: str, append: HistoryAppend) -> HistoryAppended:
        """Add items to a known user's memory; with `refresh_profile`, the base model rewrites the profile."""
        if not self.memory.known(user_id):
            raise NotFoundError(str(UnknownUser(user_id, self.job_id, list(self.memory.users))),
                                [SpecProblem(path="user_id", message="unknown user")])
        fresh = iter(self.memory.next_ids(user_id, sum(1 for item in append.items if item.id is None)))
        items = _items([item if item.id else item.model_copy(update={"id": next(fresh)}) for item in append.items],
                       "items")
        try:
            history = self.memory.append(user_id, items)
        except DuplicateItem as e:
            raise ServingError(str(e), [SpecProblem(path="items", message=str(e))]) from None
        profile = self.memory.state(user_id).profile
        if append.refresh_profile:
            user = self.memory.users[user_id].model_copy(update={"history": list(history)})
            prompt = profile_prompt(self.tokenizer, user, self.spec.data.prompts, self.spec.memory)
            generation = self.generate_with(GENERALIST, [prompt], profile_params(self.spec.memory, self.spec.seed))[0]
            profile = clean_profile(generation.text)
            self.memory.append(user_id, [], profile=profile)
        return HistoryAppended(job_id=self.job_id, user_id=user_id, added=[i.id for i in items],
                               history_items=len(history), profile=profile)

    def close(self) -> None:
        self.engine.close()


def _items(items: Sequence[HistoryItemIn], field: str) -> list[Item]:
    """History items as the data model's Items (ids given or numbered), each problem at its path."""
    out, problems, seen = [], [], set()
    for n, item in enumerate(items):
        item_id = item.id or f"inline-{n + 1}"
        if item_id in seen:
            problems.append(SpecProblem(path=f"{field}.{n}.id", message=f"duplicate id {item_id!r}"))
            continue
        seen.add(item_id)
        try:
            out.append(Item(id=item_id, input=item.input, output=item.output, timestamp=item.timestamp,
                            candidates=item.candidates))
        except ValueError as e:
            problems.append(SpecProblem(path=f"{field}.{n}", message=str(e)))
    if problems:
        raise ServingError(f"invalid {field}: {len(problems)} problem(s)", problems)
    return out
