"""The student: the generalist with PEFT LoRA adapters, and its merged form."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from prime_ray.spec import LoraSpec, ModelSpec


def lora_config(spec: LoraSpec) -> LoraConfig:
    targets = spec.target_modules
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        # PEFT spells "every linear layer but the output head" as the string 'all-linear'.
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        task_type="CAUSAL_LM",
    )


def attach_lora(model: PreTrainedModel, spec: LoraSpec) -> PeftModel:
    """`model` wrapped as a PeftModel whose only trainable parameters are the adapters (initialized
    from torch's global RNG: seed it first for reproducible adapters)."""
    model.config.use_cache = False
    return get_peft_model(model, lora_config(spec))


def merge_adapter(model_spec: ModelSpec, adapter: Path, target: Path) -> Path:
    """Save the base model with `adapter` merged into its weights (and its tokenizer) to `target`."""
    from prime_ray.models.loading import load_model

    base, tokenizer = load_model(model_spec, device="cpu", dtype="float32")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
