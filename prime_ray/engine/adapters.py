"""Named LoRA adapters on one model, merged into its weights one at a time (the transformers backend).

    switch = MergedAdapters(model, {"fast": "train/fast/adapter", "prime": "train/prime/adapter"})
    switch.activate("prime")   # W = W_base + scaling * B @ A in every module the adapter targets
    switch.activate(None)      # W = W_base: the base model again, exactly

Why merged, not PEFT's per-request LoRA layers: a LoRA layer adds two small matmuls per targeted module
at every decode step, which costs 16 % on CPU with one adapter (SmolLM2-135M, bfloat16, batch 16 of 96
new tokens, attention-only LoRA r = 8: 10.6 s against 9.2 s merged) and 40 % with a batch that mixes
adapters (PEFT's `adapter_names`: 12.9 s). An engine call serves one adapter (the Serve replica groups
requests by adapter), so merging before the call gives merged speed, and switching costs one
`B @ A` per targeted module — milliseconds.

The targeted modules' base weights are kept as a copy (their size: for attention-only LoRA on
SmolLM2-135M 26 M parameters), so switching back restores them bit for bit instead of subtracting the
delta again (which rounds in bfloat16). The adapters' A and B stay as loaded (float32, a few MB).
Supported: PEFT LoRA adapters on linear layers (`peft.tuners.lora.Linear`) without DoRA; others raise
ValueError at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class _Lora:
    a: torch.Tensor  # [r, in_features]
    b: torch.Tensor  # [out_features, r]
    scaling: float  # lora_alpha / r (or / sqrt(r) with rslora), as PEFT computed it
    fan_in_fan_out: bool  # the base weight is stored [in, out] (GPT-2's Conv1D)

    def delta(self) -> torch.Tensor:
        """scaling * B @ A, shaped like the base weight (PEFT's `get_delta_weight`), float32."""
        d = (self.b.float() @ self.a.float()) * self.scaling
        return d.T if self.fan_in_fan_out else d


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)  # narrows `Tensor | Module` for the type checker
    return weight


def check_adapter_dir(path: str | Path) -> Path:
    """`path` as a Path; FileNotFoundError when it holds no PEFT adapter."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no PEFT adapter at {path} (adapter_config.json missing)")
    return path


class MergedAdapters:
    """Named LoRA adapters over `model`, merged into its weights in place by `activate`.

    `model` is changed in place and stays a plain transformers model (no PEFT wrappers). Raises
    FileNotFoundError for a directory without an adapter, ValueError for an adapter that is not plain
    LoRA on linear layers or for an empty name.
    """

    def __init__(self, model: torch.nn.Module, adapters: Mapping[str, str | Path]):
        from peft import PeftModel
        from peft.tuners.lora import Linear as LoraLinear

        if not adapters:
            raise ValueError("MergedAdapters needs at least one adapter")
        if any(not name for name in adapters):
            raise ValueError("an adapter needs a non-empty name")
        names = list(adapters)
        peft_model = PeftModel.from_pretrained(model, str(check_adapter_dir(adapters[names[0]])), adapter_name=names[0])
        for name in names[1:]:
            peft_model.load_adapter(str(check_adapter_dir(adapters[name])), adapter_name=name)
        # weight parameter -> its adapters' LoRA factors; the parameter objects survive `unload`
        self._loras: dict[torch.Tensor, dict[str, _Lora]] = {}
        for module_name, module in peft_model.named_modules():
            if not hasattr(module, "lora_A"):
                continue
            if not isinstance(module, LoraLinear):
                raise ValueError(f"{module_name}: only LoRA on linear layers can be merged, not {type(module).__name__}")
            for name in names:
                if name not in module.lora_A:
                    continue
                if module.use_dora.get(name):
                    raise ValueError(f"adapter {name!r} uses DoRA at {module_name}: not supported")
                factors = _Lora(_weight(module.lora_A[name]), _weight(module.lora_B[name]),
                                float(module.scaling[name]), bool(module.fan_in_fan_out))
                self._loras.setdefault(_weight(module.get_base_layer()), {})[name] = factors
        peft_model.unload()  # the original modules back in place, weights untouched
        self._base = {weight: weight.detach().clone() for weight in self._loras}
        self.names: tuple[str, ...] = tuple(names)
        self.active: str | None = None

    @torch.no_grad()
    def activate(self, name: str | None) -> None:
        """Merge adapter `name` into the weights (None: the base model). ValueError for an unknown name."""
        if name == self.active:
            return
        if name is not None and name not in self.names:
            raise ValueError(f"unknown adapter {name!r}; this engine has {', '.join(self.names)}")
        for weight, loras in self._loras.items():
            base = self._base[weight]
            lora = loras.get(name) if name is not None else None
            weight.copy_(base if lora is None else (base.float() + lora.delta().to(base.device)).to(base.dtype))
        self.active = name
