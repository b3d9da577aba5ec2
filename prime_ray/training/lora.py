"""The student: the generalist with PEFT LoRA adapters, and its merged form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def unmatched_target_modules(targets: list[str], module_names: list[str]) -> list[str]:
    """The entries of `targets` that match no module name, in their order.

    PEFT's rule for a list: a target matches a module whose qualified name is the target or ends with
    `.target` ('q_proj' matches 'model.layers.0.self_attn.q_proj'). ['all-linear'] always matches.
    """
    if targets == ["all-linear"]:
        return []
    return [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in module_names)]


def check_target_modules(model_spec: ModelSpec, lora: LoraSpec) -> None:
    """Raise ValueError naming every `lora.target_modules` entry that matches no module of the model.

    PEFT alone adapts the modules that do match and silently ignores the rest. The module names come
    from the model's config, built on the meta device: no weights are read or allocated. Cheap enough
    to run before a job's first stage.
    """
    if lora.target_modules == ["all-linear"]:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prime_ray.models.loading import resolve_model_path

    path = resolve_model_path(model_spec)
    kwargs: dict[str, Any] = {"trust_remote_code": model_spec.trust_remote_code}
    if model_spec.revision and path == model_spec.name_or_path:
        kwargs["revision"] = model_spec.revision
    config = AutoConfig.from_pretrained(path, **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_spec.trust_remote_code)
    names = [name for name, _ in model.named_modules() if name]
    missing = unmatched_target_modules(lora.target_modules, names)
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ValueError(
            f"train.lora.target_modules: {', '.join(missing)} match no module of {model_spec.name_or_path} "
            f"(its linear layers: {', '.join(leaves)}; or use ['all-linear'])"
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
