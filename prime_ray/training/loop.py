"""One student's steps over a step plan, with metrics windows and checkpoint hooks (no Ray).

`prime_ray.distributed.train` runs this on every Ray Train worker and passes hooks that report
checkpoints to Ray; a test can run it in one process with any hooks.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prime_ray.training.collate import collate_rows
from prime_ray.training.engine import StepStats, TrainEngine
from prime_ray.training.plan import StepPlan
from prime_ray.training.sequences import TrainSequence


@dataclass
class LogWindow:
    """The steps since the last metrics record.

    A record's `loss` is the mean of the steps' optimized losses (`StepStats.loss`); `direct` and
    `think` are the means over the steps that had tokens of that term (None if none had);
    `lr` and `grad_norm` are those of the window's last step; `tokens_per_s` counts training-step
    time only (not logging, not checkpoints).
    """

    steps: list[StepStats] = field(default_factory=list)

    def add(self, stats: StepStats) -> None:
        self.steps.append(stats)

    def record(self) -> dict[str, Any]:
        steps, last = self.steps, self.steps[-1]
        direct = [s.direct for s in steps if s.direct is not None]
        think = [s.think for s in steps if s.think is not None]
        return {
            "loss": statistics.fmean(s.loss for s in steps),
            "direct": statistics.fmean(direct) if direct else None,
            "think": statistics.fmean(think) if think else None,
            "lr": last.learning_rate,
            "grad_norm": last.grad_norm,
            "tokens_per_s": sum(s.tokens for s in steps) / sum(s.seconds for s in steps),
            "direct_tokens": sum(s.direct_tokens for s in steps),
            "think_tokens": sum(s.think_tokens for s in steps),
        }


def run_steps(
    engine: TrainEngine,
    plan: StepPlan,
    sequences: Sequence[TrainSequence],
    *,
    pad_id: int,
    start_step: int,
    log_every: int,
    checkpoint_every: int,
    on_log: Callable[[int, dict[str, Any]], None],
    on_checkpoint: Callable[[int], None],
) -> None:
    """Steps `start_step` .. `plan.total_steps - 1` of this rank's share of `plan`.

    After every `log_every` steps (and the last) `on_log(done, record)` gets the window's record
    (`LogWindow.record` plus "epoch"); after every `checkpoint_every` steps before the last,
    `on_checkpoint(done)` (done = steps completed, 1-based).
    """
    window = LogWindow()
    total = plan.total_steps
    packed = plan.packing
    for step in range(start_step, total):
        batches = [collate_rows(sequences, rows, pad_id=pad_id, packed=packed)
                   for rows in plan.micro_batches(step, engine.rank)]
        window.add(engine.train_step(batches))
        done = step + 1
        if done % log_every == 0 or done == total:
            on_log(done, {"epoch": plan.epoch_of(step), **window.record()})
            window = LogWindow()
        if done % checkpoint_every == 0 and done < total:
            on_checkpoint(done)
