"""The JobSpec: the single source of truth for a prime-ray job and for its JSON schema.

Everything a job does is decided here: which model, which data and task, how memory is built,
how traces are synthesized and filtered, how the student is trained, how it is evaluated, and
where the artifacts go. The module imports nothing else of prime-ray, so every layer can use it.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "JobSpec",
    "SpecError",
    "SpecProblem",
    "load_spec",
    "parse_spec",
    "spec_json_schema",
    "config_hash",
    "PromptMode",
    "EvalMode",
]


class _Strict(BaseModel):
    """Unknown fields are errors: a typo in a spec must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------- model


class ModelSpec(_Strict):
    """The generalist G. The student is G plus LoRA adapters."""

    name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="A packaged name (`smollm2-135m-instruct`, `tiny-test`), a Hugging Face hub id, "
        "or a local directory.",
        examples=["smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "./my-model"],
    )
    gguf_file: str | None = Field(None, description="A GGUF file inside `name_or_path` to load from.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="`auto`: bfloat16 on GPU, float32 on CPU."
    )
    trust_remote_code: bool = False


# ---------------------------------------------------------------------------------------- task


class LabelTask(_Strict):
    """Pick one label from a fixed set (e.g. a movie's genre, a LaMP category)."""

    kind: Literal["label"] = "label"
    labels: list[str] = Field(..., min_length=2, description="The label set; answers are matched case-insensitively.")

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        if len({label.strip().lower() for label in labels}) != len(labels):
            raise ValueError("labels must be unique (case-insensitive)")
        return labels


class RatingTask(_Strict):
    """Predict a number in a range (e.g. a 1–5 movie rating)."""

    kind: Literal["rating"] = "rating"
    min: float = 1.0
    max: float = 5.0
    integer: bool = Field(True, description="Ratings are whole numbers; answers are rounded.")
    tolerance: float = Field(
        0.0, ge=0, description="A trace is verified when |answer − gold| ≤ tolerance."
    )

    @model_validator(mode="after")
    def _range(self) -> "RatingTask":
        if self.max <= self.min:
            raise ValueError(f"max ({self.max}) must be greater than min ({self.min})")
        return self


class TextTask(_Strict):
    """Write free text (e.g. a LaMP headline). Traces are ranked by likelihood gain."""

    kind: Literal["text"] = "text"
    max_answer_tokens: int = Field(48, gt=0)


class RankingTask(_Strict):
    """Choose among the query's candidates (e.g. the persuasive reply of a thread)."""

    kind: Literal["ranking"] = "ranking"
    hit_k: list[int] = Field([1, 3], description="k values for Hit@k.")

    @field_validator("hit_k")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or any(k <= 0 for k in ks):
            raise ValueError("hit_k must be a non-empty list of positive integers")
        return ks


TaskSpec = Annotated[Union[LabelTask, RatingTask, TextTask, RankingTask], Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------- data


class JsonlSource(_Strict):
    """prime-ray's native format: JSON Lines, one user per line."""

    format: Literal["jsonl"] = "jsonl"
    path: str


class MovieLensSource(_Strict):
    """MovieLens-100K from the `recbole` wheel or, with `path`, any MovieLens variant in RecBole's files."""

    format: Literal["movielens-100k"] = "movielens-100k"
    path: str | None = Field(
        None, description="A directory holding one RecBole data set, <name>.{inter,item,user} (e.g. ml-1m; "
        "the .user file is optional)."
    )
    task: Literal["rating", "genre"] = "rating"


class LampSource(_Strict):
    """A LaMP benchmark split: its questions JSON and outputs JSON."""

    format: Literal["lamp"] = "lamp"
    questions: str
    outputs: str | None = Field(
        None, description="The golds file; absent for a test split (its questions are then unlabelled queries)."
    )


class ThreadsSource(_Strict):
    """Conversation threads for ranking (Change-My-View-like): JSON Lines, one author per line."""

    format: Literal["threads"] = "threads"
    path: str


DataSource = Annotated[
    Union[JsonlSource, MovieLensSource, LampSource, ThreadsSource], Field(discriminator="format")
]


class PromptTemplates(_Strict):
    """Task wording. `{input}` is the query's input; the chat template wraps everything."""

    system: str = "You are a personal assistant who knows this user well."
    instruction: str = Field(
        "Predict this user's output for the input below.",
        description="What the model must do, as one sentence.",
    )
    answer_format: str = Field(
        "End with a final line of the form `Answer: <answer>`.",
        description="How the answer must be written, so the parser finds it.",
    )


class SplitSpec(_Strict):
    """How users and queries are held out. Deterministic for `seed`."""

    held_out_users: float = Field(
        0.2, ge=0, lt=1, description="Share of users whose queries are evaluated and who are never trained on."
    )
    queries_per_user: int = Field(
        2, ge=0, description="For adapters that build queries from a timestamped history: the latest n items."
    )
    query_order: Literal["time", "random"] = Field(
        "time", description="`time`: queries are each user's latest items; `random`: a random choice."
    )


class DataSpec(_Strict):
    source: DataSource
    task: TaskSpec
    prompts: PromptTemplates = PromptTemplates()
    split: SplitSpec = SplitSpec()
    max_users: int | None = Field(None, gt=0, description="Use at most this many users (chosen by seed).")
    max_history: int | None = Field(
        None, gt=0, description="Keep each user's latest n history items (older ones are dropped)."
    )
    max_train_examples_per_user: int | None = Field(
        None, gt=0, description="Leave-one-out examples per training user (chosen by seed)."
    )


# -------------------------------------------------------------------------------------- memory


class MemorySpec(_Strict):
    retriever: Literal["bm25", "embedding", "recent"] = Field(
        "bm25", description="Episodic memory: BM25, embeddings (the `embed` extra), or the latest items."
    )
    top_k: int = Field(4, gt=0, description="History items retrieved per example.")
    profile: bool = Field(True, description="Write a semantic profile summary per user with the generalist.")
    profile_history_items: int = Field(20, gt=0, description="History items shown to G when it writes a profile.")
    profile_max_new_tokens: int = Field(96, gt=0)


# ------------------------------------------------------------------------------------ generalist


class GeneralistSpec(_Strict):
    """The Ray Serve deployment that hosts the frozen generalist."""

    backend: Literal["hf", "vllm"] = Field("hf", description="`hf`: transformers (CPU/GPU); `vllm`: the vllm extra.")
    replicas: int = Field(1, gt=0)
    num_cpus_per_replica: float = Field(1.0, gt=0)
    num_gpus_per_replica: float = Field(0.0, ge=0)
    max_batch_size: int = Field(16, gt=0, description="`@serve.batch` max batch size.")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="`@serve.batch` wait for a fuller batch.")
    max_concurrency: int = Field(2, gt=0, description="Ray Data actors calling the deployment at once.")
    rows_per_call: int = Field(8, gt=0, description="Examples a Ray Data batch sends per call.")


# -------------------------------------------------------------------------------------- traces


class TraceFilters(_Strict):
    answer_match: bool = Field(True, description="Drop traces whose final answer, without the hint, is wrong or missing.")
    answer_without_hint: bool = Field(
        False,
        description="Stricter answer_match: G, shown the trace but not the hint, must also complete `Answer:` "
        "with the gold answer (one short greedy generation per trace).",
    )
    leaked_hint: bool = Field(True, description="Drop traces that mention the gold answer was given.")
    max_repetition: float = Field(
        0.5, gt=0, le=1, description="Drop traces whose share of repeated 3-grams exceeds this."
    )
    min_trace_words: int = Field(5, ge=0)
    max_trace_words: int = Field(400, gt=0)
    drop_if_direct_correct: bool = Field(
        False, description="Fast filter: skip examples G already answers right directly."
    )
    text_keep_top: int = Field(1, gt=0, description="Free-text tasks: keep the n traces with the largest likelihood gain.")


class TraceSpec(_Strict):
    samples_per_example: int = Field(2, gt=0)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(128, gt=0)
    direct_answer: bool = Field(True, description="Ask G for a direct answer too (kept as a statistic).")
    trace_opening: str = Field(
        "",
        max_length=200,
        description="Words each trace starts with, written into the think block before G continues (part of "
        "the trace). Small models stay on the user with an opening such as 'This user rated'.",
    )
    filters: TraceFilters = TraceFilters()


# --------------------------------------------------------------------------------------- train


class LoraSpec(_Strict):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, description="Module names, or ['all-linear']."
    )


class TrainSpec(_Strict):
    lora: LoraSpec = LoraSpec()
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    think_weight: float = Field(
        1.0, ge=0, alias="lambda", description="λ in L = CE(y|direct) + λ·CE(trace⊕y|personal-think); 0 is fast thinking."
    )
    fast_thinking_baseline: bool = Field(
        False, description="Also train the λ = 0 student with the same code and budget, for the comparison."
    )
    lr: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(4, gt=0, description="Examples per worker per forward.")
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(512, gt=0, description="Tokens per sequence; truncation never cuts the answer.")
    packing: bool = Field(False, description="Pack sequences into max_length budgets (no cross-attention).")
    num_workers: int = Field(2, gt=0)
    num_cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs Ray reserves per training worker (fractions let workers share cores)."
    )
    use_gpu: bool = False
    zero3_param_persistence_threshold: int | None = Field(
        None, ge=0, description="ZeRO-3: parameters smaller than this many elements stay whole on every "
        "worker (None: DeepSpeed's default); 0 partitions every parameter.",
    )
    checkpoint_every_steps: int = Field(20, gt=0)
    log_every_steps: int = Field(5, gt=0)
    max_failures: int = Field(2, ge=0, description="Worker failures survived by restarting from the last checkpoint.")
    merge_adapter: bool = Field(False, description="Also save the base model with the adapter merged in.")
    seed: int = 0


# ---------------------------------------------------------------------------------------- eval


class PromptMode(str, Enum):
    direct = "direct"
    think = "think"
    personal_think = "personal-think"


class EvalMode(str, Enum):
    """A model and a prompt mode."""

    generalist_direct = "generalist-direct"
    generalist_think = "generalist-think"
    generalist_personal_think = "generalist-personal-think"
    fast_direct = "fast-direct"
    fast_think = "fast-think"
    prime_direct = "prime-direct"
    prime_personal_think = "prime-personal-think"


class EvalSpec(_Strict):
    modes: list[EvalMode] = Field(default_factory=lambda: list(EvalMode), min_length=1)
    splits: list[Literal["test_query", "test_user"]] = ["test_query", "test_user"]
    max_examples: int | None = Field(None, gt=0, description="Per split, chosen by seed.")
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 is greedy decoding.")
    bootstrap_samples: int = Field(1000, ge=0, description="Resamples for 95 % intervals; 0 turns them off.")
    sample_traces_per_mode: int = Field(3, ge=0)


# ----------------------------------------------------------------------------------- resources


class ResourcesSpec(_Strict):
    ray_address: str | None = Field(None, description="A Ray cluster to join; None starts an embedded one.")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the embedded Ray (None: all).")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the embedded Ray (None: all).")


# ------------------------------------------------------------------------------------------ job


class JobSpec(_Strict):
    """A prime-ray job: ingest → memory → traces → train → eval."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "movielens-rating",
                    "model": {"name_or_path": "smollm2-135m-instruct"},
                    "data": {
                        "source": {"format": "movielens-100k", "task": "rating"},
                        "task": {"kind": "rating", "min": 1, "max": 5},
                        "max_users": 8,
                    },
                }
            ]
        },
    )

    name: str = Field(
        ..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Job name; the artifacts go under `artifact_root/name`.",
    )
    seed: int = 0
    model: ModelSpec = ModelSpec()
    data: DataSpec
    memory: MemorySpec = MemorySpec()
    generalist: GeneralistSpec = GeneralistSpec()
    traces: TraceSpec = TraceSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    resources: ResourcesSpec = ResourcesSpec()
    artifact_root: str = Field(
        "artifacts", description="A local directory or a pyarrow filesystem URI (s3://, gs://, ...)."
    )
    stages: list[Literal["ingest", "memory", "traces", "train", "eval"]] | None = Field(
        None, description="Run only these stages (and what they need); None runs all."
    )

    @model_validator(mode="after")
    def _task_fits_source(self) -> "JobSpec":
        source, task = self.data.source, self.data.task
        if isinstance(source, MovieLensSource):
            wanted = "rating" if source.task == "rating" else "label"
            if task.kind != wanted:
                raise ValueError(f"data.task.kind: MovieLens task '{source.task}' needs kind '{wanted}', got '{task.kind}'")
        if isinstance(source, ThreadsSource) and task.kind != "ranking":
            raise ValueError(f"data.task.kind: threads data needs kind 'ranking', got '{task.kind}'")
        return self


# ----------------------------------------------------------------------------------- loading


class SpecProblem(BaseModel):
    """One thing wrong with a spec, at a path in the document (e.g. `train.lora.r`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A spec that cannot be used; `problems` lists every one found."""

    def __init__(self, problems: list[SpecProblem], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid job spec{where}:\n" + "\n".join(f"  {p}" for p in problems))


def _problems(error: ValidationError) -> list[SpecProblem]:
    out = []
    for err in error.errors():
        # Discriminated unions put the chosen member's tag in the location ('source', 'movielens-100k', 'task'):
        # drop tags so the path is the one in the user's document.
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if message.startswith("data.task.kind: "):
            loc, message = ["data", "task", "kind"], message[len("data.task.kind: "):]
        if err["type"] == "greater_than":
            message = f"must be > {err['ctx']['gt']}"
        elif err["type"] == "greater_than_equal":
            message = f"must be >= {err['ctx']['ge']}"
        elif err["type"] == "less_than":
            message = f"must be < {err['ctx']['lt']}"
        elif err["type"] == "less_than_equal":
            message = f"must be <= {err['ctx']['le']}"
        elif err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "field required"
        out.append(SpecProblem(path=".".join(loc), message=message))
    return out


_UNION_TAGS = {"jsonl", "movielens-100k", "lamp", "threads", "label", "rating", "text", "ranking"}


def parse_spec(document: Any, source: str | None = None) -> JobSpec:
    """Validate a loaded document; raise SpecError listing every problem by path."""
    if not isinstance(document, dict):
        raise SpecError([SpecProblem(path="", message=f"a spec is a mapping, got {type(document).__name__}")], source)
    try:
        return JobSpec.model_validate(document)
    except ValidationError as e:
        raise SpecError(_problems(e), source) from None


def load_spec(path: str | Path) -> JobSpec:
    """Load a JobSpec from a YAML or JSON file (JSON is YAML)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Notepad writes one) is not content
    except OSError as e:
        raise SpecError([SpecProblem(path="", message=f"cannot read {path}: {e.strerror}")], str(path)) from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        message = f"not valid UTF-8 (line {line}, byte 0x{e.object[e.start]:02X})"
        raise SpecError([SpecProblem(path="", message=message)], str(path)) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpecError([SpecProblem(path="", message=f"not valid YAML/JSON{where}: {e}")], str(path)) from None
    return parse_spec(document, str(path))


def spec_json_schema() -> dict[str, Any]:
    """The JSON schema of a JobSpec document (by alias: `train.lambda`)."""
    return JobSpec.model_json_schema(by_alias=True)


def config_hash(value: Any) -> str:
    """A short, stable hash of any JSON-able value (sorted keys)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
