"""The DeepSpeed config of a training run, built from `spec.train`.

The optimizer is always a torch AdamW handed to `deepspeed.initialize` (DeepSpeed's own Adam kernels
need CUDA or a compiled CPU op); so `zero_force_ds_cpu_optimizer` is off, which ZeRO-Offload otherwise
insists on. The learning rate warms up linearly and decays on a cosine (WarmupCosineLR), over the
run's optimizer steps: step 1 uses 1/(W+1) of the peak, step W+1 the peak (see `start_schedule`).
"""

from __future__ import annotations

from typing import Any

from prime_ray.spec import TrainSpec

# The cosine decays the learning rate to this share of its peak at the last step.
COSINE_MIN_RATIO = 0.1


def warmup_steps(train: TrainSpec, total_steps: int) -> int:
    return max(2, round(train.warmup_ratio * total_steps))  # DeepSpeed's schedulers warm up 2 steps at least


def deepspeed_config(train: TrainSpec, *, total_steps: int, bf16: bool) -> dict[str, Any]:
    """A DeepSpeed config dict: ZeRO stage and offload, precision, accumulation, clipping, schedule."""
    if train.offload_params and train.zero_stage != 3:
        raise ValueError(f"train.offload_params needs train.zero_stage 3, got {train.zero_stage}")
    if train.offload_optimizer and train.zero_stage == 0:
        raise ValueError("train.offload_optimizer needs train.zero_stage 1, 2 or 3, got 0")
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bf16}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": bf16}
    if train.zero_stage == 3 and train.zero3_param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = train.zero3_param_persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "gradient_clipping": train.max_grad_norm,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_num_steps": warmup_steps(train, total_steps),
                "warmup_type": "linear",
                "warmup_min_ratio": 1.0 / (warmup_steps(train, total_steps) + 1),
                "cos_min_ratio": COSINE_MIN_RATIO,
            },
        },
        "steps_per_print": 10**9,  # progress goes to our events and metrics, not DeepSpeed's log
        "wall_clock_breakdown": False,
    }


def start_schedule(scheduler) -> None:
    """Advance a fresh DeepSpeed warmup schedule to iteration 0, the learning rate of the first step.

    DeepSpeed's schedulers start at iteration -1, whose learning rate is 0, and step after each
    optimizer step: without this the first step would not learn at all. A restored checkpoint
    overwrites the iteration, so calling it before `load_checkpoint` is harmless.
    """
    scheduler.step()
