"""Step planning: packing into rows, and each step's deterministic split between workers."""

from __future__ import annotations

import pytest

from prime_ray.training.plan import StepPlan, pack_rows
from prime_ray.training.sequences import IGNORE_INDEX, TrainSequence


def test_pack_rows_respects_capacity_and_keeps_every_sequence():
    lengths = [50, 300, 120, 480, 20, 260, 90, 200, 10]
    rows = pack_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert len(rows) == 4  # 1530 tokens: the fewest rows of 512 that can hold them
    with pytest.raises(ValueError, match="more than the row capacity"):
        pack_rows([600], 512)


def _synthetic(n: int) -> list[TrainSequence]:
    return [TrainSequence(f"u/{i}", "direct", tuple(range(5 + i % 7)), tuple([IGNORE_INDEX] * 3 + list(range(3, 5 + i % 7))))
            for i in range(n)]


@pytest.mark.parametrize("packing", [False, True])
def test_step_plan_splits_each_step_between_workers_deterministically(packing):
    seqs = _synthetic(40)
    kwargs = dict(micro_batch_size=2, gradient_accumulation_steps=2, world_size=2, packing=packing, max_length=24, seed=3, epochs=2)
    plan, again = StepPlan(seqs, **kwargs), StepPlan(seqs, **kwargs)
    assert plan.total_steps == 2 * plan.steps_per_epoch
    for step in range(plan.total_steps):
        parts = [plan.micro_batches(step, rank) for rank in range(2)]
        assert parts == [again.micro_batches(step, rank) for rank in range(2)]
        assert all(len(p) == 2 for p in parts)
        used = [i for part in parts for mb in part for row in mb for i in row]
        assert len(used) == len(set(used))  # no sequence twice within a step
    epoch0 = {i for s in range(plan.steps_per_epoch) for r in range(2) for mb in plan.micro_batches(s, r)
              for row in mb for i in row}
    assert len(epoch0) >= len(seqs) - 2 * 2 * 2 * (1 if not packing else 4)  # at most the incomplete last step is left
    longer = StepPlan(seqs, **{**kwargs, "epochs": 1}, max_steps=plan.steps_per_epoch * 3)
    assert longer.total_steps == plan.steps_per_epoch * 3
    assert longer.micro_batches(plan.steps_per_epoch * 2, 0) != []


def test_step_plan_rejects_too_little_data():
    with pytest.raises(ValueError, match="too few for one step"):
        StepPlan(_synthetic(3), micro_batch_size=2, gradient_accumulation_steps=2, world_size=2, packing=False,
                 max_length=64, seed=0, epochs=1)
