"""Generation on one accelerator, no Ray: stock `model.generate` against the engine's fastest path.

    python benchmarks/gpu_generation.py                        # SmolLM2-135M-Instruct, batch 64 and 512
    python benchmarks/gpu_generation.py --tiny                  # CPU smoke run: tiny model, batch 2 and 4

Same model, prompts (personal-think prompts as the traces stage renders them) and sampling params:

- **stock**: `model.generate` on the left-padded batch with the dynamic KV cache, as transformers'
  documentation shows it;
- **engine**: `HFEngine.generate` (prime_ray.engine.hf) with its fastest setting for the device
  (`HFEngine.fast_generation_kwargs`: on an accelerator, the static KV cache, whose decode step
  transformers compiles).

Each (path, batch) is timed after one warm-up call of the same shape (a first call compiles and
allocates). Prints tokens/s per path and batch with the device's name (and, on an accelerator, the
timed call's peak allocated memory); the last line is
`RATIO engine_vs_stock=<x>` at the largest batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation import prompts_for  # noqa: E402  (the same prompts as the Serve benchmark)

from prime_ray.engine.base import SamplingParams, create_engine  # noqa: E402
from prime_ray.paths import configure_environment  # noqa: E402
from prime_ray.spec import ModelSpec  # noqa: E402


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_memory(device: str) -> str:
    """Peak memory torch allocated on the accelerator since the last reset (blank on CPU)."""
    if not device.startswith("cuda"):
        return ""
    return f"  peak {torch.cuda.max_memory_allocated(torch.device(device)) / 2**30:6.2f} GiB"


def stock_generate(engine, prompts: list[str], params: SamplingParams) -> int:
    """transformers' own recipe: tokenizer padding, `model.generate`, count tokens before EOS/padding."""
    tok = engine.tokenizer
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(engine.device)
    out = engine.model.generate(**batch, max_new_tokens=params.max_new_tokens, do_sample=True,
                                temperature=params.temperature, top_p=params.top_p, top_k=0,
                                pad_token_id=engine.pad_token_id, eos_token_id=engine.eos_token_ids)
    new = out[:, batch["input_ids"].shape[1]:]
    done = torch.isin(new, torch.tensor(engine.eos_token_ids, device=new.device))
    # tokens up to and including the first EOS, per row
    lengths = torch.where(done.any(1), done.int().argmax(1) + 1, torch.full_like(done[:, 0], new.shape[1], dtype=torch.long))
    return int(lengths.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tiny", action="store_true", help="the tiny random test model (a CPU smoke run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default 64 512 (--tiny: 2 4)")
    parser.add_argument("--max-new-tokens", type=int, help="default 128 (--tiny: 8)")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype on an accelerator (CPU keeps float32)")
    args = parser.parse_args()
    args.batch_sizes = args.batch_sizes or ([2, 4] if args.tiny else [64, 512])
    args.max_new_tokens = args.max_new_tokens or (8 if args.tiny else 128)

    configure_environment()
    model = ModelSpec(name_or_path="tiny-test" if args.tiny else args.model)
    engine = create_engine(model, device=args.device, max_batch_size=max(args.batch_sizes))
    if engine.device.startswith("cuda"):
        engine.model.to(getattr(torch, args.dtype))
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95, seed=0)
    all_prompts = prompts_for(engine.tokenizer, max(args.batch_sizes))
    print(f"{model.name_or_path} on {device_name(engine.device)}: {args.max_new_tokens} new tokens, T 0.7, "
          f"engine settings {engine.fast_generation_kwargs() or 'default'}")

    ratio = None
    for size in args.batch_sizes:
        prompts = all_prompts[:size]
        paths = {
            "stock": lambda prompts=prompts: stock_generate(engine, prompts, params),
            "engine": lambda prompts=prompts: sum(g.completion_tokens for g in engine.generate(prompts, params)),
        }
        figures = {}
        for name, run in paths.items():
            run()  # warm-up of the same shape: compilation and allocation are not timed
            _sync(engine.device)
            if engine.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            tokens = run()
            _sync(engine.device)
            figures[name] = tokens / (time.perf_counter() - start)
            print(f"batch {size:4d}  {name:6s} {figures[name]:10.1f} tok/s{_peak_memory(engine.device)}", flush=True)
        ratio = figures["engine"] / figures["stock"]
    print(f"RATIO engine_vs_stock={ratio:.2f}")


if __name__ == "__main__":
    main()
