"""One optimizer step of each engine backend on 2 ranks (run by torch.distributed.run from test_engine.py).

Rank r trains micro-batches `RANK_SHARES[r]` of `micro_batches()`; rank 0 writes each backend's
StepStats and adapter weights after the step to the folder given as the first argument.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from prime_ray.spec import LoraSpec, ModelSpec, TrainSpec
from prime_ray.training.collate import collate_rows
from prime_ray.training.sequences import IGNORE_INDEX, TrainSequence

TINY = ModelSpec(name_or_path="tiny-test")
TRAIN = TrainSpec(lora=LoraSpec(r=4, alpha=8), learning_rate=1e-2, gradient_accumulation_steps=2, zero_stage=2,
                  warmup_ratio=0.0)
THINK_WEIGHT = 0.5
RANK_SHARES = ((0, 3), (1, 2))  # unequal token counts per rank and per micro-batch


def sequence(i: int, term: str, prompt: int, completion: int) -> TrainSequence:
    ids = [(7 * i + 3 * k) % 500 + 10 for k in range(prompt + completion)]
    return TrainSequence(f"u/{i}", term, tuple(ids), tuple([IGNORE_INDEX] * prompt + ids[prompt:]))


SEQUENCES = [sequence(0, "direct", 12, 3), sequence(1, "think", 9, 25), sequence(2, "direct", 20, 9),
             sequence(3, "think", 6, 4), sequence(4, "direct", 5, 2), sequence(5, "think", 14, 30),
             sequence(6, "direct", 8, 6), sequence(7, "think", 10, 12)]


def micro_batches():
    """4 micro-batches of 2 sequences each, padded."""
    return [collate_rows(SEQUENCES, [[2 * b], [2 * b + 1]], pad_id=0, packed=False) for b in range(4)]


def main(out: Path) -> None:
    from prime_ray.training.engine import EngineConfig, create_train_engine

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    batches = micro_batches()
    mine = [batches[i] for i in RANK_SHARES[rank]]
    results = {}
    for backend in ("torch", "deepspeed"):
        engine = create_train_engine(EngineConfig(model=TINY, train=TRAIN, total_steps=10, think_weight=THINK_WEIGHT,
                                                  backend=backend))
        stats = engine.train_step(mine)
        engine.export_adapter(out / backend)
        results[backend] = asdict(stats)
    if rank == 0:
        (out / "stats.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
