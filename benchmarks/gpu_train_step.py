"""The student's train step on one GPU, without Ray: plain PyTorch + PEFT LoRA on a random-weight
Qwen2-0.5B-shaped model in bf16. Prints tokens/s, peak memory and MFU.

    python benchmarks/gpu_train_step.py                      # on a GPU: Qwen2-0.5B shape, batch 8 x 1024
    python benchmarks/gpu_train_step.py --batch 16 --seq 512 --lora-targets all-linear
    python benchmarks/gpu_train_step.py --tiny               # anywhere (CPU): a tiny shape, checks it runs

It uses the product's code for the step (collate_rows, and the training engine's plain-PyTorch
backend: prime_loss, AdamW, clipping, the schedule), so what it measures is what a Ray Train worker
runs per micro-batch minus DeepSpeed's engine. Needs torch,
transformers, peft and the deepspeed package (the training engine takes DeepSpeed's WarmupCosineLR, so
both backends share one schedule); no Ray, no download: the weights are random.

MFU = achieved FLOP/s over the card's dense bf16 peak. FLOPs per token of a LoRA step on a frozen
base: 4·N (forward 2·N, backward through the frozen weights 2·N; N = weights in matrix products,
LM head included) + 12·layers·seq·hidden for attention scores (forward and backward); the adapters'
own FLOPs are negligible and not counted.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from prime_ray.spec import LoraSpec, ModelSpec, TrainSpec
from prime_ray.training.collate import collate_rows
from prime_ray.training.engine import EngineConfig, create_train_engine
from prime_ray.training.sequences import IGNORE_INDEX, TrainSequence

# Dense bf16 peak FLOP/s by device name (no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}

QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                 rope_theta=1_000_000.0, tie_word_embeddings=True)
TINY = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def matmul_params(model) -> int:
    """Weights that take part in matrix products (every Linear, the LM head included; not the lookup)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def random_sequences(n: int, length: int, vocab: int, prompt_share: float, seed: int = 0) -> list[TrainSequence]:
    rng = random.Random(seed)
    prompt = int(length * prompt_share)
    out = []
    for i in range(n):
        ids = [rng.randrange(1, vocab) for _ in range(length)]
        out.append(TrainSequence(f"u/{i}", "think" if i % 2 else "direct", tuple(ids),
                                 tuple([IGNORE_INDEX] * prompt + ids[prompt:])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape in float32 on CPU (checks that it runs)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-targets", default="all-linear", help="comma-separated module names, or all-linear")
    parser.add_argument("--attn", default="sdpa", help="attention implementation: sdpa, eager, flash_attention_2")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not known")
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.seq, args.steps, args.warmup = min(args.batch, 2), min(args.seq, 64), min(args.steps, 2), 1

    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = TINY if args.tiny else QWEN2_05B
    torch.manual_seed(0)
    config = Qwen2Config(**shape, attn_implementation=args.attn)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    targets = args.lora_targets.split(",")
    train = TrainSpec(lora=LoraSpec(r=args.lora_r, alpha=2 * args.lora_r, target_modules=targets), learning_rate=1e-4,
                      max_grad_norm=1.0, use_gpu=device.type == "cuda")
    # The model is built here (random weights): the engine's ModelSpec is not read.
    engine = create_train_engine(EngineConfig(model=ModelSpec(), train=train, total_steps=args.steps + args.warmup,
                                              think_weight=1.0, backend="torch"), model=model)
    engine.module.print_trainable_parameters()

    sequences = random_sequences(args.batch * (args.steps + args.warmup), args.seq, shape["vocab_size"], prompt_share=0.25)
    batches = [collate_rows(sequences, [[i] for i in range(s * args.batch, (s + 1) * args.batch)], pad_id=0,
                            packed=False).to(device) for s in range(args.steps + args.warmup)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for batch in batches[: args.warmup]:
        engine.train_step([batch])
    sync()
    started = time.perf_counter()
    tokens = 0
    for batch in batches[args.warmup:]:
        stats = engine.train_step([batch])
        tokens += stats.tokens
    sync()
    seconds = time.perf_counter() - started

    tokens_per_s = tokens / seconds
    n = matmul_params(engine.module.get_base_model())
    flops_per_token = 4 * n + 12 * shape["num_hidden_layers"] * args.seq * shape["hidden_size"]
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; dtype {dtype}; shape {'tiny' if args.tiny else 'Qwen2-0.5B'} "
          f"({n / 1e6:.0f}M matmul weights); LoRA r={args.lora_r} on {args.lora_targets}; attention {args.attn}")
    print(f"batch {args.batch} x seq {args.seq}, {args.steps} timed steps after {args.warmup} warm-up: "
          f"{seconds / args.steps * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, last loss {stats.loss:.3f}")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    achieved = tokens_per_s * flops_per_token
    mfu = f"{achieved / peak * 100:.1f}%" if peak else "n/a (unknown peak: pass --peak-tflops)"
    print(f"model FLOP/s: {achieved / 1e12:.2f} TFLOP/s; MFU: {mfu}")


if __name__ == "__main__":
    main()
