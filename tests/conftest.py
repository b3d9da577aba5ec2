"""Shared test setup: caches inside the checkout, no downloads, one local Ray per session."""

from __future__ import annotations

import functools
import os
import sys
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
    # The modules on the session's Ray run first, together: that group is the longest (the longest
    # first ends a run on several workers soonest), and once stopped its Ray's idle actors no longer
    # share the cores with the tests that start Rays of their own (`prime-ray run`, `prime-ray up`).
    on_shared_ray = {item.path for item in items if "ray_local" in item.fixturenames}
    items.sort(key=lambda item: item.path not in on_shared_ray)  # stable: each group keeps its order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs on pytest-xdist workers. Each test module goes whole to one worker, so its
    module-scoped fixtures (a finished job, a database) are made once; the modules on the session's
    Ray are one unit, so one Ray serves them all. (xdist's own `loadgroup` does not group on pytest 9:
    it renames node ids through an attribute pytest no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "ray_local" if _uses_shared_ray(module) else module

    return ModuleScheduling(config, log)


@pytest.hookimpl(trylast=True)  # after the item's own fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    """Stop the session's Ray after the last module on it (they run together, first)."""
    ray = sys.modules.get("ray")
    if ray is not None and _on_shared_ray(item) and (nextitem is None or not _on_shared_ray(nextitem)):
        ray.shutdown()


def _on_shared_ray(item: pytest.Item) -> bool:
    return _uses_shared_ray(item.path.relative_to(ROOT).as_posix())


@functools.cache
def _uses_shared_ray(module: str) -> bool:
    """Whether a test module uses the `ray_local` fixture (read from its source: the scheduler runs in
    the controller, which collects nothing)."""
    return "ray_local" in (ROOT / module).read_text()


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
