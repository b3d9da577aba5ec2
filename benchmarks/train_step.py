"""Training throughput on CPU: the Ray Train + DeepSpeed path against the plain-PyTorch step, and
packed against padded batches, on the same model and the same trace-like data.

    python benchmarks/train_step.py [--steps 3] [--rounds 2] [--hidden 256] [--layers 4]

1. ray_vs_plain: tokens/s of `train_students` with one Ray Train worker (1 CPU, 1 torch thread,
   the DeepSpeed ZeRO-2 engine, LoRA, gradient_accumulation_steps 2), as the worker measures it (time
   in training steps; start-up and checkpoints excluded), divided by tokens/s of the plain-PyTorch
   engine (`backend="torch"`) in this process on 1 torch thread over the same step plan, measured before and after the Ray runs (the better one counts): what the
   distributed path costs on equal resources. Both are medians of per-step rates. The same plan on
   2 workers is printed too: how it scales depends on how busy the machine's cores are.
2. packed_vs_padded: non-padding tokens/s of the plain step with packed rows (2 rows of <= 512
   tokens per micro-batch) divided by that with padded batches (4 sequences per micro-batch, each
   padded to the longest: about as many tokens per forward), on a mix of short direct sequences and
   long think sequences like PRIME's.

The last line is `RATIO ray_vs_plain=<x> packed_vs_padded=<y>`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
from pathlib import Path

import torch

from prime_ray.distributed.cluster import disconnect_ray, ensure_ray
from prime_ray.distributed.train import StudentRun, train_students
from prime_ray.models.loading import load_model
from prime_ray.paths import configure_environment
from prime_ray.spec import ModelSpec, ResourcesSpec, TrainSpec
from prime_ray.training.artifacts import read_metrics
from prime_ray.training.collate import collate_rows
from prime_ray.training.engine import EngineConfig, create_train_engine
from prime_ray.training.plan import step_plan
from prime_ray.training.sequences import IGNORE_INDEX, TrainSequence

PAD = 0


def trace_like_sequences(n: int, vocab: int, seed: int = 0) -> list[TrainSequence]:
    """Half direct (prompt 60–140, answer 4 tokens), half think (prompt 120–260, trace 40–220, answer 4)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        think = i % 2 == 1
        prompt = rng.randint(120, 260) if think else rng.randint(60, 140)
        completion = (rng.randint(40, 220) if think else 0) + 4
        ids = [rng.randrange(1, vocab) for _ in range(prompt + completion)]
        out.append(TrainSequence(f"u/{i}", "think" if think else "direct", tuple(ids),
                                 tuple([IGNORE_INDEX] * prompt + ids[prompt:])))
    return out


def save_random_llama(directory: Path, hidden: int, layers: int, vocab: int) -> ModelSpec:
    """A random Llama with the tiny model's tokenizer, saved where load_model can read it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = load_model(ModelSpec(name_or_path="tiny-test"))
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 128), max_position_embeddings=2048,
                         pad_token_id=PAD, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return ModelSpec(name_or_path=str(directory))


class PlainRun:
    """The plain-PyTorch engine over a step plan, one step at a time: per-step non-padding tokens/s."""

    def __init__(self, model_spec, sequences, train: TrainSpec, total_steps: int, world: int, packing: bool):
        self.train = train.model_copy(update={"packing": packing})
        self.sequences = sequences
        self.world = world
        self.plan = step_plan(sequences, self.train, world_size=world, max_steps=total_steps)
        self.engine = create_train_engine(EngineConfig(model=model_spec, train=self.train, total_steps=total_steps,
                                                       think_weight=1.0, backend="torch"))
        self.step = self.tokens = self.padded_tokens = 0

    def run(self, steps: int) -> list[float]:
        rates = []
        for _ in range(steps):
            batches = [collate_rows(self.sequences, rows, pad_id=PAD, packed=self.train.packing)
                       for rank in range(self.world) for rows in self.plan.micro_batches(self.step, rank)]
            stats = self.engine.train_step(batches)
            rates.append(stats.tokens / stats.seconds)
            self.tokens += stats.tokens
            self.padded_tokens += stats.padded_tokens
            self.step += 1
        return rates

    @property
    def efficiency(self) -> float:
        """Share of the processed tokens that are not padding."""
        return self.tokens / max(self.padded_tokens, 1)


def ray_tokens_per_s(model_spec, sequences, train: TrainSpec, steps: int, out: Path) -> float:
    ensure_ray(ResourcesSpec(num_cpus=2))
    out.mkdir(parents=True, exist_ok=True)
    train_students([StudentRun("prime", 1.0, sequences)], model=model_spec, train=train, total_steps=steps,
                   pad_id=PAD, train_dir=out, metrics_path=out / "metrics.jsonl")
    records = read_metrics(out / "metrics.jsonl", "prime")
    return statistics.median(r["tokens_per_s"] for r in records[1:])  # the first window holds the warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per round of each plain mode")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--sequences", type=int, default=256)
    args = parser.parse_args()
    configure_environment()
    torch.set_num_threads(1)  # like each Ray Train worker

    print("load average at start: {:.1f} {:.1f} {:.1f} on {} CPUs".format(*os.getloadavg(), os.cpu_count()))
    sequences = trace_like_sequences(args.sequences, args.vocab)
    lengths = [len(s) for s in sequences]
    print(f"data: {len(sequences)} sequences, length mean {statistics.mean(lengths):.0f}, "
          f"min {min(lengths)}, max {max(lengths)}")
    train = TrainSpec(zero_stage=2, micro_batch_size=2, num_workers=2, num_cpus_per_worker=1, max_length=512,
                      learning_rate=1e-3, log_every_steps=1, checkpoint_every_steps=10**6, max_steps=args.steps * args.rounds + 1)
    with tempfile.TemporaryDirectory(prefix="prime-ray-bench-") as tmp:
        model_spec = save_random_llama(Path(tmp) / "model", args.hidden, args.layers, args.vocab)
        print(f"model: random Llama, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; LoRA r={train.lora.r}")

        # Interleaved rounds, medians of per-step rates: robust to other load on a shared machine.
        # Padded batches of 4 sequences process about as many tokens per forward as 2 packed rows.
        steps = 1 + 2 * args.rounds * args.steps
        runs = {
            "plain": PlainRun(model_spec, sequences, train, steps, world=2, packing=False),
            "padded": PlainRun(model_spec, sequences, train.model_copy(update={"micro_batch_size": 4}), steps,
                               world=2, packing=False),
            "packed": PlainRun(model_spec, sequences, train, steps, world=2, packing=True),
        }
        rates: dict[str, list[float]] = {mode: [] for mode in runs}
        for run in runs.values():
            run.run(1)  # warm-up
        for _ in range(args.rounds):
            for mode, run in runs.items():
                rates[mode] += run.run(args.steps)
        padded, packed = (statistics.median(rates[m]) for m in ("padded", "packed"))
        print(f"plain step, padded (4 sequences per micro-batch, {runs['padded'].efficiency:.0%} real tokens): "
              f"{padded:,.0f} non-padding tokens/s")
        print(f"plain step, packed (2 rows of <= 512 tokens per micro-batch, {runs['packed'].efficiency:.0%} real "
              f"tokens): {packed:,.0f} non-padding tokens/s")

        # One Ray Train worker with 2 accumulation steps runs exactly the plain step's plan on one core.
        one = train.model_copy(update={"num_workers": 1, "gradient_accumulation_steps": 2})
        ray_one = ray_tokens_per_s(model_spec, sequences, one, train.max_steps, Path(tmp) / "ray1")
        ray_two = ray_tokens_per_s(model_spec, sequences, train, train.max_steps, Path(tmp) / "ray2")
        before = statistics.median(rates["plain"])
        # The baseline again, after: the better of the two is compared (load on the machine varies).
        after = statistics.median(runs["plain"].run(args.steps * args.rounds))
        plain = max(before, after)
        print(f"plain step, padded (2 sequences per micro-batch, 2 micro-batches per step, 1 torch thread): "
              f"{before:,.0f} tokens/s before the Ray runs, {after:,.0f} after")
        print(f"Ray Train + DeepSpeed ZeRO-2, 1 worker x 1 CPU, same plan: {ray_one:,.0f} tokens/s")
        print(f"Ray Train + DeepSpeed ZeRO-2, 2 workers x 1 CPU, same plan: {ray_two:,.0f} tokens/s "
              f"({ray_two / plain:.2f}x the plain step on one thread)")
    disconnect_ray()  # before the last lines: Ray's workers' late log lines would follow them otherwise
    print("load average at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"RATIO ray_vs_plain={ray_one / plain:.2f} packed_vs_padded={packed / padded:.2f}")


if __name__ == "__main__":
    main()
