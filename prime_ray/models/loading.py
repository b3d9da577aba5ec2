"""Loading a causal LM and its tokenizer: packaged names, hub ids, local directories, GGUF files.

(Interface; the model-layer work fills it in.)
"""

from __future__ import annotations

from prime_ray.spec import ModelSpec


def load_tokenizer(spec: ModelSpec):
    """The tokenizer of `spec`, with a chat template and a pad token set."""
    raise NotImplementedError


def load_model(spec: ModelSpec, *, device: str = "cpu", dtype: str | None = None):
    """(model, tokenizer) for `spec` on `device`. `tiny-test` and `smollm2-135m-instruct` are packaged names."""
    raise NotImplementedError
