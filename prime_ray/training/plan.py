"""Data-parallel step planning: which rows of sequences each worker uses at each optimizer step.

Rows are one sequence each (padded batches) or several packed by best-fit decreasing into `max_length`
tokens (`pack_rows`). The plan is a pure function of its inputs and the step, so every worker, the
driver and a resumed run compute the same one.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

from prime_ray.spec import TrainSpec, derive_seed
from prime_ray.training.collate import Row
from prime_ray.training.sequences import TrainSequence


def pack_rows(lengths: Sequence[int], capacity: int) -> list[Row]:
    """Best-fit decreasing bin packing of sequence lengths into rows of at most `capacity` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[Row] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"sequence {i} has {lengths[i]} tokens, more than the row capacity {capacity}")
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            bisect.insort(free, (capacity - lengths[i], len(rows) - 1))
        else:
            room, r = free.pop(at)
            rows[r].append(i)
            bisect.insort(free, (room - lengths[i], r))
    return rows


class StepPlan:
    """Which sequences each worker uses at each optimizer step: deterministic, so a restart resumes exactly.

    An epoch shuffles the sequences (`derive_seed(seed, "epoch", epoch)`), forms rows (one sequence each, or packed), and cuts
    them into micro-batches of `micro_batch_size` rows. Step s of the epoch uses micro-batches
    [s·W·A, (s+1)·W·A) of which worker r takes every W-th from r (W workers, A accumulation steps).
    An incomplete last step is dropped. With `max_steps`, epochs repeat until that many steps are done.
    """

    def __init__(
        self,
        sequences: Sequence[TrainSequence],
        *,
        micro_batch_size: int,
        gradient_accumulation_steps: int,
        world_size: int,
        packing: bool,
        max_length: int,
        seed: int,
        epochs: int,
        max_steps: int | None = None,
    ):
        self.sequences = sequences
        self.micro_batch_size = micro_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.world_size = world_size
        self.packing = packing
        self.max_length = max_length
        self.seed = seed
        self._epochs: dict[int, list[list[Row]]] = {}
        per_step = world_size * gradient_accumulation_steps
        self.steps_per_epoch = len(self._epoch(0)) // per_step
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(sequences)} training sequences make {len(self._epoch(0))} micro-batches of "
                f"{micro_batch_size}: too few for one step of {world_size} worker(s) × "
                f"gradient_accumulation_steps {gradient_accumulation_steps}"
            )
        self.total_steps = max_steps if max_steps is not None else epochs * self.steps_per_epoch

    def _epoch(self, epoch: int) -> list[list[Row]]:
        if epoch not in self._epochs:
            rng = random.Random(derive_seed(self.seed, "epoch", epoch))
            order = list(range(len(self.sequences)))
            rng.shuffle(order)
            if self.packing:
                packed = pack_rows([len(self.sequences[i]) for i in order], self.max_length)
                rows = [[order[j] for j in row] for row in packed]
                rng.shuffle(rows)
            else:
                rows = [[i] for i in order]
            size = self.micro_batch_size
            self._epochs = {epoch: [rows[i : i + size] for i in range(0, len(rows), size)]}
        return self._epochs[epoch]

    def micro_batches(self, step: int, rank: int) -> list[list[Row]]:
        """The `gradient_accumulation_steps` micro-batches (each a list of rows) of worker `rank` at
        optimizer step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        per_step = self.world_size * self.gradient_accumulation_steps
        chunk = self._epoch(epoch)[within * per_step : (within + 1) * per_step]
        return chunk[rank :: self.world_size]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


def step_plan(sequences: Sequence[TrainSequence], train: TrainSpec, *, world_size: int, max_steps: int | None) -> StepPlan:
    """The step plan of `train` that every worker (and the driver, to count steps) builds from the same inputs."""
    return StepPlan(
        sequences,
        micro_batch_size=train.micro_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        world_size=world_size,
        packing=train.packing,
        max_length=train.max_length,
        seed=train.seed,
        epochs=train.epochs,
        max_steps=max_steps,
    )
