"""Connecting to Ray: an embedded local cluster by default, or a given address."""

from __future__ import annotations

import os

import ray

from prime_ray.paths import configure_environment
from prime_ray.spec import ResourcesSpec


def ensure_ray(resources: ResourcesSpec, address: str | None = None) -> None:
    """Initialize Ray once per process: join `address` (or the spec's), else start a local one."""
    if ray.is_initialized():
        return
    env = configure_environment()
    address = address or resources.ray_address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": env}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            address="local",  # always a new embedded cluster, never one that `ray start` left running
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            runtime_env=runtime_env,
            include_dashboard=False,
            _temp_dir=env["RAY_TMPDIR"],
        )
