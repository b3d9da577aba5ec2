"""Connecting to Ray: an embedded local cluster by default, or a given address."""

from __future__ import annotations

import os

import ray

from prime_ray.paths import configure_environment
from prime_ray.spec import ResourcesSpec


def ensure_ray(resources: ResourcesSpec, address: str | None = None) -> bool:
    """Initialize Ray once per process: join `address` (or the spec's), else start a local one.

    Returns True if this call started or joined Ray, False if it was initialized already.
    """
    _keep_driver_sigint()
    if ray.is_initialized():
        return False
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
    return True


def disconnect_ray() -> None:
    """Leave Ray: the actors this driver owns end (detached ones, such as Serve's, do not), and an
    embedded cluster stops."""
    ray.shutdown()


def _keep_driver_sigint() -> None:
    """Ray Train's trainer replaces the driver's SIGINT handler with one that aborts the Train run
    and lets the driver go on, and never puts the previous one back: a Ctrl-C during training, or
    in any later stage, would not stop the job. prime-ray's runner handles SIGINT itself (it cancels
    the job whatever the stage), so the trainer's handler is not registered."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    DataParallelTrainer._register_sigint_handler = _no_sigint_handler  # type: ignore[method-assign]  # a deliberate patch


def _no_sigint_handler(self, controller) -> None:  # noqa: ARG001
    return None
