"""The JobSpec: the single source of truth for a prime-ray job and for its JSON schema.

Everything a job does is decided here: which model, which data and task, how memory is built,
how traces are synthesized and filtered, how the student is trained, how it is evaluated, and
where the artifacts go. The module imports nothing else of prime-ray, so every layer can use it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "DuplicateKey",
    "EvalMode",
    "JobSpec",
    "PromptMode",
    "SpecError",
    "SpecProblem",
    "config_hash",
    "derive_seed",
    "load_spec",
    "parse_json",
    "parse_spec",
    "parse_yaml",
    "resolve_spec_paths",
    "spec_json_schema",
    "unique_keys",
    "PromptMode",
    "EvalMode",
]


class _Strict(BaseModel):
    """Unknown fields are errors: a typo in a spec must not silently fall back to a default. NaN and
    infinities are errors at every float field: NaN passes every comparison and would reject data later."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


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
        "auto", description="`auto`: bfloat16 on GPU and on CPUs with bfloat16 matrix units (Intel AMX), "
        "float32 on other CPUs. For inference: training takes its precision from `train.use_gpu`."
    )
    trust_remote_code: bool = Field(False, description="Let transformers run the model repository's own code.")


# ---------------------------------------------------------------------------------------- task


class LabelTask(_Strict):
    """Pick one label from a fixed set (e.g. a movie's genre, a LaMP category)."""

    kind: Literal["label"] = Field("label", description="Task kind (the union's discriminator).")
    labels: list[str] = Field(..., min_length=2, description="The label set; answers are matched case-insensitively.")

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        if len({label.strip().lower() for label in labels}) != len(labels):
            raise ValueError("labels must be unique (case-insensitive)")
        return labels


class RatingTask(_Strict):
    """Predict a number in a range (e.g. a 1–5 movie rating)."""

    kind: Literal["rating"] = Field("rating", description="Task kind (the union's discriminator).")
    min: float = Field(1.0, description="Lowest rating; an unparsed answer costs the whole range.")
    max: float = Field(5.0, description="Highest rating.")
    integer: bool = Field(True, description="Ratings are whole numbers; answers are rounded.")
    tolerance: float = Field(
        0.0, ge=0, description="A trace is verified when |answer − gold| ≤ tolerance."
    )

    @model_validator(mode="after")
    def _range(self) -> RatingTask:
        if self.max <= self.min:
            raise ValueError(f"max ({self.max}) must be greater than min ({self.min})")
        return self


class TextTask(_Strict):
    """Write free text (e.g. a LaMP headline). Traces are ranked by likelihood gain."""

    kind: Literal["text"] = Field("text", description="Task kind (the union's discriminator).")
    max_answer_tokens: int = Field(48, gt=0, description="Tokens an answer may take when it is generated alone.")


class RankingTask(_Strict):
    """Choose among the query's candidates (e.g. the persuasive reply of a thread)."""

    kind: Literal["ranking"] = Field("ranking", description="Task kind (the union's discriminator).")
    hit_k: list[int] = Field([1, 3], description="k values for Hit@k.")

    @field_validator("hit_k")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or any(k <= 0 for k in ks):
            raise ValueError("hit_k must be a non-empty list of positive integers")
        return ks


TaskSpec = Annotated[LabelTask | RatingTask | TextTask | RankingTask, Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------- data


class JsonlSource(_Strict):
    """prime-ray's native format: JSON Lines, one user per line."""

    format: Literal["jsonl"] = Field("jsonl", description="Source format (the union's discriminator).")
    path: str = Field(..., description="A .jsonl file (or a URI); a relative path is relative to the spec file's folder.")


MovieLensTask = Literal["rating", "genre", "liked"]


class MovieLensSource(_Strict):
    """MovieLens-100K from the `recbole` wheel or, with `path`, any MovieLens variant in RecBole's files."""

    format: Literal["movielens-100k"] = Field("movielens-100k", description="Source format (the union's discriminator).")
    path: str | None = Field(
        None, description="A directory holding one RecBole data set, <name>.{inter,item,user} (e.g. ml-1m; "
        "the .user file is optional)."
    )
    task: MovieLensTask = Field(
        "rating",
        description="`rating`: the 1–5 rating; `genre`: the movie's first genre; `liked`: whether the user "
        "rates it 4 or more (labels `yes` / `no`).",
    )
    min_ratings: int = Field(
        0, ge=0, description="Keep only users with at least this many ratings (history and queries together)."
    )
    min_like_rate_distance: float = Field(
        0.0, ge=0, le=1,
        description="Keep only users whose like-rate (share of history ratings ≥ 4) differs from the crowd's "
        "(all users' history) by at least this much: users whose taste is their own. 0 keeps everyone.",
    )


class LampSource(_Strict):
    """A LaMP benchmark split: its questions JSON and outputs JSON."""

    format: Literal["lamp"] = Field("lamp", description="Source format (the union's discriminator).")
    questions: str = Field(..., description="The split's questions JSON file.")
    outputs: str | None = Field(
        None, description="The golds file; absent for a test split (its questions are then unlabelled queries)."
    )


class ThreadsSource(_Strict):
    """Conversation threads for ranking (Change-My-View-like): JSON Lines, one author per line."""

    format: Literal["threads"] = Field("threads", description="Source format (the union's discriminator).")
    path: str = Field(..., description="A .jsonl file (or a URI); a relative path is relative to the spec file's folder.")


DataSource = Annotated[
    JsonlSource | MovieLensSource | LampSource | ThreadsSource, Field(discriminator="format")
]


class PromptTemplates(_Strict):
    """Task wording. `{input}` is the query's input; the chat template wraps everything."""

    system: str = Field("You are a personal assistant who knows this user well.", description="The system message.")
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
    """Where the users come from, what is predicted for them, and how they are split."""

    source: DataSource = Field(..., description="The data source; `format` picks the adapter.")
    task: TaskSpec = Field(..., description="What is predicted; `kind` picks the task.")
    prompts: PromptTemplates = Field(PromptTemplates(), description="Task wording of every prompt.")
    split: SplitSpec = Field(SplitSpec(), description="How users and queries are held out.")
    max_users: int | None = Field(None, gt=0, description="Use at most this many users (chosen by seed).")
    max_history: int | None = Field(
        None, gt=0, description="Keep each user's latest n history items (older ones are dropped)."
    )
    max_train_examples_per_user: int | None = Field(
        None, gt=0, description="Leave-one-out examples per training user (chosen by seed)."
    )
    balance_labels: bool = Field(
        False,
        description="Label tasks: in each split (train, test_query, test_user) keep the same number of examples "
        "of every label present, a seeded choice, so always answering one label scores 1 / labels.",
    )

    @model_validator(mode="after")
    def _balance_needs_labels(self) -> DataSpec:
        if self.balance_labels and self.task.kind != "label":
            raise ValueError(f"balance_labels needs a label task, got kind '{self.task.kind}'")
        return self


# -------------------------------------------------------------------------------------- memory


class MemorySpec(_Strict):
    """The user's memory: episodic (retrieved history items) and semantic (a profile G writes)."""

    retriever: Literal["bm25", "embedding", "recent"] = Field(
        "bm25", description="Episodic memory: BM25, embeddings (the `embed` extra), or the latest items."
    )
    top_k: int = Field(4, gt=0, description="History items retrieved per example.")
    profile: bool = Field(True, description="Write a semantic profile summary per user with the generalist.")
    profile_history_items: int = Field(20, gt=0, description="History items shown to G when it writes a profile.")
    profile_max_new_tokens: int = Field(96, gt=0, description="Token budget of a profile.")


# ------------------------------------------------------------------------------------ generalist


class GeneralistSpec(_Strict):
    """The Ray Serve deployment that hosts the frozen generalist."""

    backend: Literal["hf", "vllm"] = Field("hf", description="`hf`: transformers (CPU/GPU); `vllm`: the vllm extra.")
    replicas: int = Field(1, gt=0, description="Serve replicas of the generalist.")
    num_cpus_per_replica: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica.")
    num_gpus_per_replica: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica (fractions share one).")
    max_batch_size: int = Field(
        16, gt=0, description="Engine batch size: the most prompts the engine decodes at once. A replica joins the "
        "queued requests of equal sampling params and adapter, and decodes them in batches of this size."
    )
    batch_wait_timeout_s: float = Field(
        0.05, ge=0, description="How long a replica holds a group of requests smaller than `max_batch_size`, "
        "waiting for more of its kind (seconds, from its oldest request); and how long any group waits after "
        "an engine call ends, for that call's callers to send their next step and join it."
    )
    max_concurrency: int = Field(
        2, gt=0, description="Ray Data workers calling the deployment at once (0.1 CPU each: they wait on it)."
    )
    rows_per_call: int | None = Field(
        None,
        gt=0,
        description="Rows (examples) one Ray Data worker call holds in flight: whole users are packed into a "
        "call up to this many, and each step of the work is sent for all of them at once. None: "
        "max_batch_size × replicas, so one worker's step alone fills every replica's batch.",
    )
    prefix_cache_mib: int = Field(
        1024,
        ge=0,
        description="Memory (MiB) of each `hf` replica for the KV of the sequences it generated, reused by later "
        "prompts that start with the same tokens (automatic prefix caching: a hint-free prompt after its hinted "
        "one, a forced answer after its thinking, one example's prompts in several eval modes). 0: off. The "
        "`vllm` backend caches prefixes on its own.",
    )
    cpu_threads: int | None = Field(
        None,
        gt=0,
        description="torch threads of each replica on CPU. None: the embedded Ray's CPUs (resources.num_cpus, "
        "else the machine's) shared among the replicas, at least ceil(num_cpus_per_replica): the Ray Data "
        "workers only wait on the replicas, so the cores they reserve would idle otherwise.",
    )

    @property
    def resolved_rows_per_call(self) -> int:
        return self.rows_per_call or self.max_batch_size * self.replicas


# -------------------------------------------------------------------------------------- traces


class TraceFilters(_Strict):
    """Which synthesized traces are kept for training."""

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
    min_trace_words: int = Field(5, ge=0, description="Drop traces shorter than this many words.")
    max_trace_words: int = Field(400, gt=0, description="Drop traces longer than this many words.")
    drop_if_direct_correct: bool = Field(
        False, description="Fast filter: skip examples G already answers right directly."
    )
    text_keep_top: int = Field(1, gt=0, description="Free-text tasks: keep the n traces with the largest likelihood gain.")
    min_gain: float | None = Field(
        None,
        description="Any task: keep only traces whose likelihood gain log p(y|x,trace) − log p(y|x) under the "
        "generalist exceeds this (0: the trace makes the gold answer more likely). None turns the filter off "
        "for label, rating and ranking tasks (free text always needs a positive gain).",
    )


class TraceSpec(_Strict):
    """Trace synthesis: G, shown the gold answer as a hint, writes the reasoning the student learns."""

    samples_per_example: int = Field(2, gt=0, description="Traces sampled per training example.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature of the traces (0 is greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass of the traces.")
    max_new_tokens: int = Field(128, gt=0, description="Token budget of a trace and its answer.")
    direct_answer: bool = Field(True, description="Ask G for a direct answer too (kept as a statistic).")
    trace_opening: str = Field(
        "",
        max_length=200,
        description="Words each trace starts with, written into the think block before G continues (part of "
        "the trace). Small models stay on the user with an opening such as 'This user rated'.",
    )
    filters: TraceFilters = Field(TraceFilters(), description="Which traces are kept.")


# --------------------------------------------------------------------------------------- train


class LoraSpec(_Strict):
    """The student's PEFT LoRA adapters (the base weights stay frozen)."""

    r: int = Field(8, gt=0, description="Rank of the adapters.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, description="Module names, or ['all-linear']."
    )


class TrainSpec(_Strict):
    """Student training on Ray Train with DeepSpeed ZeRO. The loss of an optimizer step is each term's
    token mean over all of the step's micro-batches and workers (docs/training.md)."""

    lora: LoraSpec = Field(LoraSpec(), description="The adapters trained.")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2, description="DeepSpeed ZeRO stage: 1 partitions optimizer states, 2 also gradients, 3 also parameters."
    )
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer states in CPU memory (stage >= 1).")
    offload_params: bool = Field(False, description="ZeRO-Infinity: parameters in CPU memory (stage 3).")
    think_weight: float = Field(
        1.0, ge=0, alias="lambda", description="λ in L = CE(y|direct) + λ·CE(trace⊕y|personal-think); 0 is fast thinking."
    )
    fast_thinking_baseline: bool = Field(
        False, description="Also train the λ = 0 student with the same code and budget, for the comparison."
    )
    answer_prompt: Literal["personal-direct", "direct"] = Field(
        "personal-direct",
        description="The prompt of the answer term CE(y|·) (and so of the whole fast-thinking student): "
        "`personal-direct` shows the user's profile and retrieved episodes, `direct` only the query.",
    )
    learning_rate: float = Field(
        2e-4, gt=0, description="Peak AdamW learning rate (reached after warmup, then cosine decay). "
        "Formerly `lr` (still accepted, deprecated)."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the optimizer steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the adapter weights.")
    max_grad_norm: float = Field(
        1.0, gt=0, description="Clip the global L2 norm of the gradient to this (DeepSpeed `gradient_clipping`). "
        "Formerly `grad_clip` (still accepted, deprecated)."
    )
    epochs: int = Field(1, gt=0, description="Passes over the training sequences (when `max_steps` is not set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(4, gt=0, description="Rows (sequences, or packed rows) per worker per forward.")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="Micro-batches per worker per optimizer step. Formerly `grad_accum` (still accepted, "
        "deprecated)."
    )
    max_length: int = Field(512, gt=0, description="Tokens per sequence; truncation never cuts the answer.")
    packing: bool = Field(False, description="Pack sequences into max_length budgets (no cross-attention).")
    num_workers: int = Field(2, gt=0, description="Ray Train workers (data-parallel ranks).")
    num_cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs Ray reserves per training worker (fractions let workers share cores)."
    )
    use_gpu: bool = Field(False, description="One GPU per worker, bf16; otherwise CPU, float32.")
    zero3_param_persistence_threshold: int | None = Field(
        None, ge=0, description="ZeRO-3: parameters smaller than this many elements stay whole on every "
        "worker (None: DeepSpeed's default); 0 partitions every parameter.",
    )
    checkpoint_every_steps: int = Field(20, gt=0, description="Optimizer steps between checkpoints (for resuming).")
    log_every_steps: int = Field(5, gt=0, description="Optimizer steps per metrics record.")
    max_failures: int = Field(2, ge=0, description="Worker failures survived by restarting from the last checkpoint.")
    merge_adapter: bool = Field(False, description="Also save the base model with the adapter merged in.")
    seed: int = Field(
        0, description="Training sub-seed: the data order and the LoRA initialization use "
        "`derive_seed(seed, 'train', train.seed)`, so changing it re-draws only the training randomness."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        """Accept the old spellings (`lr`, `grad_clip`, `grad_accum`) with a DeprecationWarning."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in _RENAMED_TRAIN_FIELDS.items():
            if old in data:
                if new in data:
                    raise ValueError(f"train.{old} is the deprecated name of train.{new}: give only train.{new}")
                warnings.warn(f"train.{old} is deprecated: use train.{new}", DeprecationWarning, stacklevel=2)
                data[new] = data.pop(old)
        return data


# Deprecated TrainSpec names and the field's names (TRL / DeepSpeed) that replace them.
_RENAMED_TRAIN_FIELDS = {"lr": "learning_rate", "grad_clip": "max_grad_norm", "grad_accum": "gradient_accumulation_steps"}


# ---------------------------------------------------------------------------------------- eval


class PromptMode(str, Enum):
    direct = "direct"
    personal_direct = "personal-direct"
    think = "think"
    personal_think = "personal-think"


class EvalMode(str, Enum):
    """A model and a prompt mode."""

    generalist_direct = "generalist-direct"
    generalist_personal_direct = "generalist-personal-direct"
    generalist_think = "generalist-think"
    generalist_personal_think = "generalist-personal-think"
    fast_direct = "fast-direct"
    fast_personal_direct = "fast-personal-direct"
    fast_think = "fast-think"
    prime_direct = "prime-direct"
    prime_personal_direct = "prime-personal-direct"
    prime_personal_think = "prime-personal-think"


class EvalSpec(_Strict):
    """Evaluation: every mode (a model and a prompt mode) on the held-out splits."""

    modes: list[EvalMode] = Field(
        default_factory=lambda: list(EvalMode), min_length=1, description="Modes to evaluate (default: all)."
    )
    splits: list[Literal["test_query", "test_user"]] = Field(
        ["test_query", "test_user"],
        description="`test_query`: training users' held-out queries; `test_user`: users never trained on.",
    )
    max_examples: int | None = Field(None, gt=0, description="Per split, chosen by seed.")
    max_new_tokens: int = Field(
        128, gt=0,
        description="New tokens of a think-mode answer (with its reasoning); direct modes use the task's answer "
        "budget (at most this), as trace synthesis does.",
    )
    force_answer: bool = Field(
        True,
        description="Budget forcing (s1, arXiv:2501.19393) in think modes: an output without an answer line "
        "of its own (cut off at `max_new_tokens`, or stopped without one) gets its think block closed and "
        "`Answer:` completed greedily within the task's answer budget; such answers are never strict and the "
        "report shows their share. False: those outputs stay unparsed.",
    )
    temperature: float = Field(0.0, ge=0, description="0 is greedy decoding.")
    bootstrap_samples: int = Field(1000, ge=0, description="Resamples for 95 % intervals; 0 turns them off.")
    sample_traces_per_mode: int = Field(3, ge=0, description="Example outputs per mode shown in the report.")


# ----------------------------------------------------------------------------------- resources


class ResourcesSpec(_Strict):
    """The Ray cluster the job runs on."""

    ray_address: str | None = Field(None, description="A Ray cluster to join; None starts an embedded one.")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the embedded Ray (None: all).")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the embedded Ray (None: all).")


# ------------------------------------------------------------------------------------------ job


# The spec the JSON schema, the REST API's documentation and the console's submit page show.
JOB_SPEC_EXAMPLE: dict[str, Any] = {
    "name": "movielens-rating",
    "model": {"name_or_path": "smollm2-135m-instruct"},
    "data": {
        "source": {"format": "movielens-100k", "task": "rating"},
        "task": {"kind": "rating", "min": 1, "max": 5},
        "max_users": 8,
    },
}


class JobSpec(_Strict):
    """A prime-ray job: ingest → memory → traces → train → eval."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [JOB_SPEC_EXAMPLE]},
    )

    name: str = Field(
        ..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Job name; the artifacts go under `artifact_root/name`.",
    )
    seed: int = Field(
        0, description="The job's base seed: every random stream is `derive_seed(seed, <stream name>)` "
        "(user and example choices, trace samples, eval subsets; training also mixes in `train.seed`)."
    )
    model: ModelSpec = Field(ModelSpec(), description="The generalist G; the student is G plus LoRA.")
    data: DataSpec = Field(..., description="Users, task and split.")
    memory: MemorySpec = Field(MemorySpec(), description="How each example's memory is built.")
    generalist: GeneralistSpec = Field(GeneralistSpec(), description="How G is served.")
    traces: TraceSpec = Field(TraceSpec(), description="How traces are synthesized and filtered.")
    train: TrainSpec = Field(TrainSpec(), description="How the students are trained.")
    eval: EvalSpec = Field(EvalSpec(), description="How the models are evaluated.")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="Where the job runs.")
    artifact_root: str = Field(
        "artifacts", description="A local directory or a pyarrow filesystem URI (s3://, gs://, ...). A relative "
        "directory, like every relative path in a spec file, is relative to the spec file's folder."
    )
    stages: list[Literal["ingest", "memory", "traces", "train", "eval"]] | None = Field(
        None, description="Run only these stages (and what they need); None runs all."
    )

    @model_validator(mode="after")
    def _task_fits_source(self) -> JobSpec:
        source, task = self.data.source, self.data.task
        if isinstance(source, MovieLensSource):
            wanted = "rating" if source.task == "rating" else "label"
            if task.kind != wanted:
                raise ValueError(f"data.task.kind: MovieLens task '{source.task}' needs kind '{wanted}', got '{task.kind}'")
            if (source.task == "liked" and isinstance(task, LabelTask)  # the kind check above made it one
                    and sorted(label.strip().lower() for label in task.labels) != ["no", "yes"]):
                raise ValueError(f"data.task.labels: MovieLens task 'liked' needs labels [yes, no], got {task.labels}")
            if source.min_like_rate_distance > 0 and source.task == "genre":
                raise ValueError("data.source.min_like_rate_distance: needs ratings (task 'rating' or 'liked')")
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


def _printable(text: str) -> str:
    """`text` with lone surrogates written as escapes: an error message must itself be encodable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _problems(error: ValidationError) -> list[SpecProblem]:
    out = []
    for err in error.errors():
        # Discriminated unions put the chosen member's tag in the location ('source', 'movielens-100k', 'task'):
        # drop tags so the path is the one in the user's document.
        loc = [_printable(str(p)) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        for prefix in ("data.task.kind", "data.task.labels", "data.source.min_like_rate_distance"):
            if message.startswith(prefix + ": "):
                loc, message = prefix.split("."), message[len(prefix) + 2:]
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
        elif err["type"] == "finite_number":
            message = "must be a finite number"
        out.append(SpecProblem(path=".".join(loc), message=_printable(message)))
    return out


_UNION_TAGS = {"jsonl", "movielens-100k", "lamp", "threads", "label", "rating", "text", "ranking"}

# Bounds of a spec document. A spec is a few hundred lines and a few levels deep; the bounds are checked
# while it is read, so a hostile document costs little to refuse.
MAX_SPEC_CHARS = 1 << 20
MAX_SPEC_DEPTH = 32
# Integers a spec may hold: what every consumer downstream (SQLite, Arrow, torch seeds) can store.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _document_problems(document: Any) -> list[SpecProblem]:
    """What no spec field accepts, wherever it is: integers beyond 64 bits, strings that cannot be
    encoded (lone surrogates, from `\\ud800` escapes), nesting deeper than MAX_SPEC_DEPTH."""
    problems = []
    stack: list[tuple[list[str], Any]] = [([], document)]
    while stack:  # iterative: a document nested a thousand deep must not exhaust the call stack here
        path, value = stack.pop()
        where = ".".join(_printable(p) for p in path)
        if isinstance(value, (dict, list)) and len(path) >= MAX_SPEC_DEPTH:
            problems.append(SpecProblem(path=where, message=f"nested deeper than {MAX_SPEC_DEPTH} levels"))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and not _encodable(key):
                    problems.append(SpecProblem(path=".".join([*path, _printable(key)]).lstrip("."),
                                                message="key is not valid Unicode text (a lone surrogate)"))
                    continue
                stack.append(([*path, str(key)], item))
        elif isinstance(value, list):
            stack.extend(([*path, str(i)], item) for i, item in enumerate(value))
        elif isinstance(value, str) and not _encodable(value):
            problems.append(SpecProblem(path=where, message="not valid Unicode text (a lone surrogate)"))
        elif isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
            problems.append(SpecProblem(path=where, message="out of range (integers must fit in 64 bits)"))
    return sorted(problems, key=lambda p: p.path)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_spec(document: Any, source: str | None = None) -> JobSpec:
    """Validate a loaded document; raise SpecError listing every problem by path."""
    if not isinstance(document, dict):
        raise SpecError([SpecProblem(path="", message=f"a spec is a mapping, got {type(document).__name__}")], source)
    problems = _document_problems(document)
    try:
        spec = JobSpec.model_validate(document)
    except ValidationError as e:
        # One problem per place: what the document check found covers what pydantic says there (or above it).
        problems += [p for p in _problems(e)
                     if not any(q.path == p.path or q.path.startswith(f"{p.path}.") or not p.path for q in problems)]
    if problems:
        raise SpecError(problems, source)
    return spec


class DuplicateKey(ValueError):
    """A JSON object names a key twice (see `unique_keys`)."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(f"duplicate key {_printable(key)!r}")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A `json.load(s)` object_pairs_hook: a key given twice raises DuplicateKey instead of silently
    keeping the last value (what `json.loads` does by default)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses aliases and merge keys and stops composing past MAX_SPEC_DEPTH
    (events are parsed lazily, so nothing deeper is ever parsed)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            # An alias lets a small document expand into a huge one; a spec never needs one.
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted", event.start_mark)  # type: ignore[arg-type]  # the stubs split yaml.Mark in two
        self.depth += 1
        try:
            if self.depth > MAX_SPEC_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_SPEC_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _duplicate_keys(loader: yaml.SafeLoader, root: yaml.Node | None) -> list[SpecProblem]:
    """Every key named twice in one mapping, by path, with both lines (1-based). YAML merge keys
    (`<<`) are refused too: they override silently as well."""
    problems = []
    stack: list[tuple[list[str], Any]] = [([], root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack.extend(([*path, str(i)], item) for i, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            name = _printable(str(key_node.value)) if isinstance(key_node, yaml.ScalarNode) else "?"
            where = ".".join([*path, name])
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(SpecProblem(path=where, message=f"YAML merge keys are not accepted "
                                            f"(line {key_node.start_mark.line + 1})"))
                continue
            try:
                key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
                hash(key)
            except (yaml.YAMLError, ValueError, TypeError, OverflowError):
                key = None
            line = key_node.start_mark.line + 1
            if key is not None and key in first_line:
                problems.append(SpecProblem(path=where, message=f"duplicate key (line {line}, first on line {first_line[key]})"))
            elif key is not None:
                first_line[key] = line
            stack.append(([*path, name], value_node))
    return sorted(problems, key=lambda p: p.path)


def _too_large(text: str, source: str | None) -> None:
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError([SpecProblem(path="", message=f"a spec is at most {MAX_SPEC_CHARS} characters, "
                                     f"this one has {len(text)}")], source)


def parse_yaml(text: str, source: str | None = None) -> Any:
    """Parse one YAML (or JSON) document as a spec reader must: duplicate keys, aliases and merge keys
    are errors, nesting and size are bounded. Raises SpecError with located problems (line, column)."""
    _too_large(text, source)
    loader = None
    try:
        loader = _SpecLoader(text)  # reads the first characters already: may raise a ReaderError
        root = loader.get_single_node()
        duplicates = _duplicate_keys(loader, root)
        document = loader.construct_document(root) if root is not None and not duplicates else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpecError([SpecProblem(path="", message=_printable(f"not valid YAML/JSON{where}: {e}"))], source) from None
    except (ValueError, OverflowError, RecursionError) as e:  # e.g. an integer of thousands of digits
        raise SpecError([SpecProblem(path="", message=_printable(f"cannot read the document: {e}"))], source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if duplicates:
        raise SpecError(duplicates, source)
    return document


def parse_json(text: str, source: str | None = None) -> Any:
    """Parse a JSON document with the rules of `parse_yaml` (duplicate keys are errors, located by line)."""
    _too_large(text, source)
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise SpecError([SpecProblem(path="", message=f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}")],
                        source) from None
    except DuplicateKey as e:
        try:  # JSON is YAML: the YAML reader locates the duplicates by path and line
            parse_yaml(text, source)
        except SpecError as located:
            if any("duplicate key" in p.message for p in located.problems):
                raise located from None
        raise SpecError([SpecProblem(path="", message=str(e))], source) from None
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits, nesting past the C limit
        raise SpecError([SpecProblem(path="", message=_printable(f"cannot read the document: {e}"))], source) from None


def load_spec(path: str | Path) -> JobSpec:
    """Load a JobSpec from a YAML or JSON file (JSON is YAML); see `parse_yaml` for the reading rules."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Notepad writes one) is not content
    except OSError as e:
        raise SpecError([SpecProblem(path="", message=f"cannot read {path}: {e.strerror}")], str(path)) from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        message = f"not valid UTF-8 (line {line}, byte 0x{e.object[e.start]:02X})"
        raise SpecError([SpecProblem(path="", message=message)], str(path)) from None
    return resolve_spec_paths(parse_spec(parse_yaml(text, str(path)), str(path)), path.parent)


# ------------------------------------------------------------------------------- spec paths


def _is_uri(value: str) -> bool:
    return "://" in value


def _resolve(value: str, base: Path) -> str:
    if _is_uri(value) or value.startswith("~") or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def _looks_local(name_or_path: str, base: Path) -> bool:
    """A model given by a relative path (`./my-model`, `../models/x`, or a folder that exists next to
    the spec), as opposed to a packaged name or a hub id (`org/name`)."""
    return name_or_path.startswith(("./", "../")) or name_or_path in (".", "..") or (base / name_or_path).is_dir()


def resolve_spec_paths(spec: JobSpec, base: str | Path) -> JobSpec:
    """The spec with its relative local paths made absolute against `base` (a spec file's folder).

    Resolved: the data source's files (`path`, LaMP's `questions` / `outputs`), a model given by a
    relative path (see `_looks_local`), and `artifact_root`. URIs (`s3://...`), absolute paths and
    `~` paths are left as they are. Applied by `load_spec`, so a spec runs the same from any folder;
    a spec sent to a gateway as a document is not resolved (the gateway sets the artifact root).
    """
    base = Path(base).resolve()
    source = spec.data.source
    fields = {name: getattr(source, name) for name in ("path", "questions", "outputs") if getattr(source, name, None)}
    if fields:
        source = source.model_copy(update={k: _resolve(v, base) for k, v in fields.items()})
    model = spec.model
    if not _is_uri(model.name_or_path) and _looks_local(model.name_or_path, base):
        model = model.model_copy(update={"name_or_path": _resolve(model.name_or_path, base)})
    data = spec.data.model_copy(update={"source": source})
    return spec.model_copy(update={"data": data, "model": model, "artifact_root": _resolve(spec.artifact_root, base)})


def spec_json_schema() -> dict[str, Any]:
    """The JSON schema of a JobSpec document (by alias: `train.lambda`)."""
    return JobSpec.model_json_schema(by_alias=True)


def config_hash(value: Any) -> str:
    """A short, stable hash of any JSON-able value (sorted keys)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def derive_seed(base: int, *labels: object) -> int:
    """The seed of one named random stream: `base` (the job's `seed`) and labels naming the stream.

    Every sub-seed of a job comes from here (`derive_seed(seed, "split")`, `derive_seed(seed, "traces", s)`,
    ...), so streams are independent of each other and changing one knob re-draws only its own stream.
    Returns an int in [0, 2**31): the first bytes of SHA-256 over `base` and the labels joined by ':',
    small enough for every consumer (random, numpy, torch, vLLM).
    """
    key = ":".join(str(part) for part in (base, *labels))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF
