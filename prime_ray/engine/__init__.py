"""Generation engines (no Ray): transformers by default, vLLM with the `vllm` extra."""

from prime_ray.engine.base import Generation, GenerationEngine, SamplingParams, create_engine

__all__ = ["Generation", "GenerationEngine", "SamplingParams", "create_engine"]
