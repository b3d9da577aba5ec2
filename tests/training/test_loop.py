"""A student's steps over a step plan with the plain-PyTorch engine: metrics windows and hooks (no Ray)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

from prime_ray.training.engine import EngineConfig, StepStats, TorchEngine
from prime_ray.training.loop import run_steps
from prime_ray.training.plan import step_plan

sys.path.insert(0, str(Path(__file__).parent))
from engine_ranks import SEQUENCES, TINY, TRAIN  # noqa: E402

sys.path.remove(str(Path(__file__).parent))


class StatsKeeping(TorchEngine):
    def train_step(self, micro_batches) -> StepStats:
        stats = super().train_step(micro_batches)
        self.history = [*getattr(self, "history", []), stats]
        return stats


def test_windows_average_the_optimized_step_losses_and_hooks_fire_on_schedule():
    train = TRAIN.model_copy(update={"micro_batch_size": 1, "gradient_accumulation_steps": 2})
    plan = step_plan(SEQUENCES, train, world_size=1, max_steps=3)
    engine = StatsKeeping(EngineConfig(model=TINY, train=train, total_steps=3, think_weight=0.5, backend="torch"))
    logged, checkpoints = [], []
    run_steps(engine, plan, SEQUENCES, pad_id=0, start_step=0, log_every=2, checkpoint_every=2,
              on_log=lambda done, record: logged.append((done, record)), on_checkpoint=checkpoints.append)

    assert checkpoints == [2]  # not after the last step
    assert [done for done, _ in logged] == [2, 3]  # every 2 steps, and the last
    first, last = logged[0][1], logged[1][1]
    steps = engine.history
    assert first["loss"] == pytest.approx(statistics.fmean(s.loss for s in steps[:2]))
    assert last["loss"] == pytest.approx(steps[2].loss) and last["lr"] == steps[2].learning_rate
    assert first["direct_tokens"] + first["think_tokens"] == sum(s.direct_tokens + s.think_tokens for s in steps[:2])
    windows = {2: steps[0:2], 3: steps[2:3]}
    for done, record in logged:
        think = [s.think for s in windows[done] if s.think is not None]
        assert record["think"] == (pytest.approx(statistics.fmean(think)) if think else None)
        assert record["epoch"] == 0 and record["tokens_per_s"] > 0
