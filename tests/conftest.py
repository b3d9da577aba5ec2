"""Shared test setup: caches inside the checkout, no downloads, one local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PRIME_RAY_CACHE_DIR", str(ROOT / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from prime_ray.paths import configure_environment  # noqa: E402

configure_environment()


def pytest_collection_modifyitems(config, items):
    # `make test-fast` deselects `ray`: a test that starts the shared Ray must say so.
    unmarked = [i.nodeid for i in items if "ray_local" in i.fixturenames and not i.get_closest_marker("ray")]
    if unmarked:
        raise pytest.UsageError(f"tests using ray_local must be marked @pytest.mark.ray: {unmarked}")
    # The modules on the session's Ray run last, together: once started, that Ray keeps its idle Serve,
    # Train and Data actors (about a tenth of a core) until the session ends, and the tests that start
    # Rays of their own (`prime-ray run`, `prime-ray up`) would share the 2 cores with it.
    on_shared_ray = {item.path for item in items if "ray_local" in item.fixturenames}
    items.sort(key=lambda item: item.path in on_shared_ray)  # stable: each group keeps its order


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, shared by every test that needs one (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=300 * 1024 * 1024,
            runtime_env={"env_vars": configure_environment()},
            _temp_dir=os.environ["RAY_TMPDIR"],
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def fixtures_dir() -> Path:
    return ROOT / "tests" / "fixtures"


# ------------------------------------------------------------------------------ a served job


@pytest.fixture(scope="module")  # appended history changes it: one per test module
def served_job(tmp_path_factory) -> Path:
    """A finished job's folder made in seconds without Ray (prime_ray.serving.synthetic): the e2e users,
    their real memory, made-up profiles, two LoRA adapters with random non-zero weights."""
    from prime_ray.serving.synthetic import make_job_dir

    return make_job_dir(tmp_path_factory.mktemp("served-job"), ROOT / "tests" / "fixtures" / "e2e" / "users.jsonl")
