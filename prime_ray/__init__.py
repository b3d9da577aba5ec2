"""prime-ray: personalized thinking learned by self-distillation (PRIME), as a service on Ray.

The public facade: the job spec, the local runner and the client SDK. Everything else is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prime_ray.spec import JobSpec, SpecError, load_spec, parse_spec

__version__ = "0.1.0"

__all__ = ["JobSpec", "SpecError", "load_spec", "parse_spec", "run_job", "PrimeClient", "__version__"]

if TYPE_CHECKING:
    from prime_ray.client import PrimeClient
    from prime_ray.pipeline.runner import run_job


def __getattr__(name: str) -> Any:
    # Imported on first use: the runner pulls in Ray and torch, the client does not need them.
    if name == "run_job":
        from prime_ray.pipeline.runner import run_job

        return run_job
    if name == "PrimeClient":
        from prime_ray.client import PrimeClient

        return PrimeClient
    raise AttributeError(name)
