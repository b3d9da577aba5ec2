"""The training engine: one student (the generalist + LoRA), its optimizer and schedule, behind one
interface with two backends. No Ray here: `prime_ray.distributed.train` runs it on Ray Train workers,
benchmarks and tests run it in one process.

    engine = create_train_engine(EngineConfig(model=..., train=..., total_steps=..., think_weight=...))
    stats = engine.train_step(micro_batches)      # one optimizer step -> StepStats
    engine.save_checkpoint(directory, tag) / engine.load_checkpoint(directory, tag)
    engine.export_adapter(target)                 # PEFT format, gathered from ZeRO-3 partitions

Backends (`ENGINE_BACKENDS`, chosen by `EngineConfig.backend`):

- `deepspeed`: `deepspeed.initialize` with the config of `deepspeed_config(train)` (ZeRO stage, offload,
  bf16 on GPU, clipping, WarmupCosineLR); a torch AdamW over the adapter weights.
- `torch`: plain PyTorch with the same AdamW, clipping and schedule; gradients are summed over ranks
  with `torch.distributed` when a process group of more than one rank exists.

Both optimize the same objective (`training/loss.py`): each term is the token mean over the whole
optimizer step (every micro-batch, every rank), and `StepStats.loss` is that optimized value. Ranks
come from `torch.distributed` when it is initialized (one rank otherwise). Every rank seeds torch with
`train.seed` before attaching LoRA, so adapters start identical everywhere (ZeRO-3 partitions, it
does not broadcast).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.distributed as dist

from prime_ray.spec import ModelSpec, TrainSpec
from prime_ray.training.collate import Batch
from prime_ray.training.loss import TokenCounts, prime_loss, token_counts

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Backend = Literal["deepspeed", "torch"]


class Progress(Protocol):
    """Where a training run reports (a pipeline `StageProgress`; picklable when it crosses to workers)."""

    def update(self, done: int, total: int | None = None, **metrics: Any) -> None: ...

    def info(self, message: str, **metrics: Any) -> None: ...


@dataclass(frozen=True)
class EngineConfig:
    """What a training engine is built from."""

    model: ModelSpec  # the base model (ignored when a model is passed to `create_train_engine`)
    train: TrainSpec  # LoRA, optimizer, schedule, ZeRO, precision, accumulation
    total_steps: int  # optimizer steps of the run: the length of the learning-rate schedule
    think_weight: float  # λ of the objective
    backend: Backend = "deepspeed"


@dataclass(frozen=True)
class StepStats:
    """One optimizer step, over all micro-batches and all ranks (identical on every rank)."""

    loss: float  # the optimized loss: direct + λ·think, each a token mean over the step (nats/token)
    direct: float | None  # mean token CE of the direct term over the step; None without direct tokens
    think: float | None  # mean token CE of the think term over the step; None without think tokens
    direct_tokens: int  # scored tokens of each term in the step
    think_tokens: int
    tokens: int  # non-padding tokens processed
    padded_tokens: int  # tokens processed, padding included
    grad_norm: float  # global L2 norm of the gradient before clipping
    learning_rate: float  # the rate this step used
    seconds: float  # wall time of the step on this rank


ENGINE_BACKENDS: dict[str, type[TrainEngine]] = {}


def register_backend(name: Backend) -> Callable[[type[TrainEngine]], type[TrainEngine]]:
    def register(cls: type[TrainEngine]) -> type[TrainEngine]:
        ENGINE_BACKENDS[name] = cls
        return cls

    return register


def create_train_engine(config: EngineConfig, model: PreTrainedModel | None = None) -> TrainEngine:
    """The engine of `config.backend`, over `model` (a transformers causal LM; loaded from
    `config.model` in float32 on CPU when None). Raises ValueError for an unknown backend."""
    if config.backend not in ENGINE_BACKENDS:
        raise ValueError(f"unknown training backend {config.backend!r}; known: {', '.join(sorted(ENGINE_BACKENDS))}")
    return ENGINE_BACKENDS[config.backend](config, model)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainEngine(ABC):
    """A student under training. Subclasses provide forward, backward, the optimizer step,
    checkpoints and the adapter export; `train_step` is shared."""

    def __init__(self, config: EngineConfig, model: PreTrainedModel | None = None):
        from prime_ray.models.loading import load_model
        from prime_ray.training.lora import attach_lora

        self.config = config
        self.rank, self.world_size = _rank_and_world()
        if model is None:
            model, _ = load_model(config.model, device="cpu", dtype="float32")  # DeepSpeed casts for bf16
        # Same seed on every rank: identical LoRA initialization.
        torch.manual_seed(config.train.seed)
        self.module = attach_lora(model, config.train.lora)
        self.trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.train.learning_rate, weight_decay=config.train.weight_decay
        )

    # ----------------------------------------------------------------------- backend parts

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def learning_rate(self) -> float:
        """The rate the next optimizer step uses."""

    @abstractmethod
    def _forward(self, batch: Batch) -> torch.Tensor:
        """Logits (batch, seq_len, vocab) of `batch` (already on `device`)."""

    @abstractmethod
    def _backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of `loss` (a micro-batch's share of the step's global loss, 0-dim)."""

    @abstractmethod
    def _optimizer_step(self) -> float:
        """Sum gradients over ranks, clip, step the optimizer and the schedule, zero the gradients;
        return the gradient norm before clipping."""

    @abstractmethod
    def save_checkpoint(self, directory: Path, tag: str) -> None:
        """Write this rank's training state (adapter, optimizer, schedule) under `directory/tag`."""

    @abstractmethod
    def load_checkpoint(self, directory: Path, tag: str) -> None:
        """Restore what `save_checkpoint(directory, tag)` wrote (every rank calls it)."""

    @abstractmethod
    def export_adapter(self, target: Path) -> None:
        """Save the adapter in PEFT format to `target` (written by rank 0; every rank must call it)."""

    @property
    def local_parameter_fraction(self) -> float:
        """Share of the model's parameter elements held by this rank (1.0 unless ZeRO-3 partitions them)."""
        full = local = 0
        for p in self.module.parameters():
            numel = getattr(p, "ds_numel", p.numel())
            full += numel
            local += p.ds_tensor.numel() if hasattr(p, "ds_numel") else numel  # type: ignore[attr-defined]  # set by ZeRO-3
        return local / max(full, 1)

    # ------------------------------------------------------------------------------ the step

    def train_step(self, micro_batches: Sequence[Batch]) -> StepStats:
        """One optimizer step over this rank's `micro_batches` (every rank calls it with its own).

        The loss is the global token mean of each term over the step (`training/loss.py`): the token
        counts of all micro-batches are all-reduced over ranks before the first forward, so the
        gradient equals that of the unsharded step. Raises ValueError when the number of
        micro-batches does not fit the backend (DeepSpeed: `gradient_accumulation_steps`).
        """
        started = time.perf_counter()
        if not micro_batches:
            raise ValueError("a training step needs at least one micro-batch")
        self._check_micro_batches(len(micro_batches))
        rate = self.learning_rate
        think_weight = self.config.think_weight
        local = TokenCounts(0, 0)
        for batch in micro_batches:
            local = local + token_counts(batch.labels, batch.terms)
        counts = self._all_reduce([local.direct, local.think])
        step_counts = TokenCounts(int(counts[0]), int(counts[1]))
        self.module.train()
        sums = [0.0, 0.0, 0, 0]  # direct CE sum, think CE sum, tokens, padded tokens
        for batch in micro_batches:
            batch = batch.to(self.device)
            terms = prime_loss(self._forward(batch), batch.labels, batch.terms, think_weight, step_counts)
            self._backward(terms.total)
            sums[0] += float(terms.direct_sum)
            sums[1] += float(terms.think_sum)
            sums[2] += batch.tokens
            sums[3] += batch.padded_tokens
        grad_norm = self._optimizer_step()
        direct_sum, think_sum, tokens, padded = self._all_reduce(sums)
        direct = direct_sum / step_counts.direct if step_counts.direct else None
        think = think_sum / step_counts.think if step_counts.think else None
        return StepStats(
            loss=(direct or 0.0) + think_weight * (think or 0.0),
            direct=direct,
            think=think,
            direct_tokens=step_counts.direct,
            think_tokens=step_counts.think,
            tokens=int(tokens),
            padded_tokens=int(padded),
            grad_norm=grad_norm,
            learning_rate=rate,
            seconds=time.perf_counter() - started,
        )

    def _check_micro_batches(self, count: int) -> None:  # noqa: B027 - an optional hook
        pass

    def _all_reduce(self, values: Sequence[float]) -> list[float]:
        """Sums over ranks (float64 keeps token counts exact; on the engine's device, which NCCL needs)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().to("cpu", copy=True) for name, p in self.module.named_parameters() if p.requires_grad}


def _schedule(optimizer: torch.optim.Optimizer, train: TrainSpec, total_steps: int):
    """The run's WarmupCosineLR (DeepSpeed's, the same for both backends), at the first step's rate."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    from prime_ray.training.deepspeed_config import deepspeed_config, start_schedule

    params = deepspeed_config(train, total_steps=total_steps, bf16=False)["scheduler"]["params"]
    scheduler = WarmupCosineLR(optimizer, **params)
    start_schedule(scheduler)
    return scheduler


@register_backend("torch")
class TorchEngine(TrainEngine):
    """Plain PyTorch: AdamW, `clip_grad_norm_`, the same schedule as DeepSpeed's config. Runs on
    CUDA when `train.use_gpu` (the model keeps the dtype it was given), else on CPU."""

    def __init__(self, config: EngineConfig, model: PreTrainedModel | None = None):
        super().__init__(config, model)
        self._device = torch.device("cuda" if config.train.use_gpu else "cpu")
        self.module.to(self._device)
        self.scheduler = _schedule(self.optimizer, config.train, config.total_steps)
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _forward(self, batch: Batch) -> torch.Tensor:
        return self.module(**batch.model_inputs(), use_cache=False).logits

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _optimizer_step(self) -> float:
        if self.world_size > 1:
            for p in self.trainable:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _state_path(self, directory: Path, tag: str) -> Path:
        return Path(directory) / tag / f"rank_{self.rank}.pt"

    def save_checkpoint(self, directory: Path, tag: str) -> None:
        path = self._state_path(directory, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"adapter": self._adapter_state(), "optimizer": self.optimizer.state_dict(),
             "scheduler": self.scheduler.state_dict()},
            path,
        )

    def load_checkpoint(self, directory: Path, tag: str) -> None:
        state = torch.load(self._state_path(directory, tag), map_location=self._device, weights_only=True)
        self.module.load_state_dict(state["adapter"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def export_adapter(self, target: Path) -> None:
        if self.rank == 0:
            self.module.save_pretrained(target, state_dict=self._adapter_state())  # type: ignore[arg-type]  # any path


@register_backend("deepspeed")
class DeepSpeedEngine(TrainEngine):
    """DeepSpeed ZeRO (stage, offload, bf16 from `deepspeed_config(train)`). Needs a process group:
    Ray Train's, or one `deepspeed.init_distributed` starts from the RANK/WORLD_SIZE/MASTER_* env."""

    def __init__(self, config: EngineConfig, model: PreTrainedModel | None = None):
        import deepspeed

        from prime_ray.training.deepspeed_config import deepspeed_config, start_schedule

        super().__init__(config, model)
        train = config.train
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.module,
            optimizer=self.optimizer,
            config=deepspeed_config(train, total_steps=config.total_steps, bf16=train.use_gpu),
        )
        start_schedule(self.scheduler)
        self.rank, self.world_size = _rank_and_world()

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def _check_micro_batches(self, count: int) -> None:
        wanted = self.engine.gradient_accumulation_steps()
        if count != wanted:
            raise ValueError(f"DeepSpeed steps every gradient_accumulation_steps={wanted} micro-batches, got {count}")

    def _forward(self, batch: Batch) -> torch.Tensor:
        return self.engine(**batch.model_inputs(), use_cache=False).logits

    def _backward(self, loss: torch.Tensor) -> None:
        # The loss is already this micro-batch's share of the step's sum: no division by the
        # accumulation steps, and × world size undoes the data-parallel gradient average.
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self.engine.step()  # steps the optimizer (clipping, schedule) at the accumulation boundary

    def _optimizer_step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save_checkpoint(self, directory: Path, tag: str) -> None:
        self.engine.save_checkpoint(str(directory), tag=tag, exclude_frozen_parameters=True)

    def load_checkpoint(self, directory: Path, tag: str) -> None:
        self.engine.load_checkpoint(str(directory), tag=tag, load_module_strict=False)

    def export_adapter(self, target: Path) -> None:
        import deepspeed

        params = [p for p in self.module.parameters() if p.requires_grad]
        # Under ZeRO-3 each rank holds a partition: gather the full adapter on every rank first.
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.config.train.zero_stage == 3):
            if self.rank == 0:
                self.module.save_pretrained(target, state_dict=self._adapter_state())  # type: ignore[arg-type]  # any path
