"""Named LoRA adapters merged per call (`MergedAdapters`), on the tiny model in float32."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from prime_ray.engine import SamplingParams, create_engine
from prime_ray.engine.adapters import MergedAdapters
from prime_ray.models.loading import load_model
from prime_ray.spec import ModelSpec

# float32: a merged copy and an in-place switch must agree exactly, not to bfloat16's precision
TINY = ModelSpec(name_or_path="tiny-test", dtype="float32")
PROMPTS = ["<|im_start|>user\nRate Heat (1995).<|im_end|>\n<|im_start|>assistant\n", "Answer:", "<think>\nShe likes"]
GREEDY = SamplingParams(max_new_tokens=10)


def _adapter(path, seed: int, **config) -> str:
    """A LoRA adapter with random (non-zero) weights, so it changes the outputs."""
    model, _ = load_model(TINY)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      init_lora_weights=False, **config)
    get_peft_model(model, lora).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"fast": _adapter(root / "fast", 1), "prime": _adapter(root / "prime", 2)}


@pytest.fixture(scope="module")
def engine(adapters):
    return create_engine(TINY, device="cpu", adapters=adapters)


def test_each_adapter_answers_as_the_model_with_only_it_merged(engine, adapters):
    assert engine.adapters == ("fast", "prime")
    base = create_engine(TINY, device="cpu")
    expected = {None: base.generate(PROMPTS, GREEDY)}
    scores = {None: base.score(PROMPTS, [" 4", " 5", " well"])}
    for name, path in adapters.items():
        merged = create_engine(TINY, device="cpu", adapter_path=path)
        expected[name] = merged.generate(PROMPTS, GREEDY)
        scores[name] = merged.score(PROMPTS, [" 4", " 5", " well"])
    assert expected["fast"] != expected[None] and expected["prime"] != expected["fast"]  # the adapters matter
    for name in ["prime", None, "fast", "prime", None, "fast"]:  # every switch, each twice
        assert engine.generate(PROMPTS, GREEDY, name) == expected[name], name
        assert engine.score(PROMPTS, [" 4", " 5", " well"], name) == pytest.approx(scores[name], abs=1e-5)


def test_switching_back_restores_the_base_weights_bit_for_bit(adapters):
    model, _ = load_model(TINY)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    switch = MergedAdapters(model, adapters)
    assert not any("lora" in n for n, _ in model.named_parameters())  # a plain transformers model again
    for name in ["fast", "prime", "fast", None]:
        switch.activate(name)
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        if name is None:
            assert changed == []
        else:  # exactly the weights the adapter targets
            assert changed and all(n.rsplit(".", 2)[-2] in {"q_proj", "k_proj", "v_proj", "o_proj"} for n in changed)


def test_unknown_adapters_and_folders_are_refused(engine, tmp_path):
    with pytest.raises(ValueError, match=r"unknown adapter 'slow'; this engine has fast, prime"):
        engine.generate(PROMPTS, GREEDY, "slow")
    with pytest.raises(ValueError, match="built without named adapters"):
        create_engine(TINY, device="cpu").score(PROMPTS[:1], [" 4"], "fast")
    with pytest.raises(FileNotFoundError, match="adapter_config.json missing"):
        create_engine(TINY, device="cpu", adapters={"fast": str(tmp_path)})


def test_a_dora_adapter_is_refused_by_name(tmp_path):
    path = _adapter(tmp_path / "dora", 3, use_dora=True)
    model, _ = load_model(TINY)
    with pytest.raises(ValueError, match="adapter 'dora' uses DoRA"):
        MergedAdapters(model, {"dora": path})
