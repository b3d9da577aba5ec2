"""docs/configuration.md lists every variable the deploy files and the code read; docs/deploy.md covers every file."""

from __future__ import annotations

import re
from pathlib import Path

from prime_ray.service.settings import FORWARDED_ENV, GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
DEPLOY_FILES = [p for p in sorted([*ROOT.joinpath("cluster").rglob("*"), *ROOT.joinpath("deploy").rglob("*")])
                if p.is_file()]


def _documented_variables() -> set[str]:
    rows = [line for line in CONFIGURATION.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_every_variable_of_the_deploy_files_and_the_code_is_documented():
    used = {f"PRIME_RAY_{name.upper()}" for name in GatewaySettings.model_fields} | set(FORWARDED_ENV)
    for path in [*DEPLOY_FILES, *ROOT.joinpath("prime_ray").rglob("*.py")]:
        used |= set(re.findall(r"\b(PRIME_RAY_[A-Z0-9_]+)\b", path.read_text()))
    used |= {"RAY_ADDRESS", "RAY_TMPDIR", "TORCH_EXTENSIONS_DIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"}
    missing = used - _documented_variables()
    assert not missing, f"docs/configuration.md does not list {sorted(missing)}"


def test_documented_variables_are_read_somewhere():
    """No stale rows: each documented variable appears in the code, a deploy file or the Makefile."""
    sources = "\n".join(p.read_text() for p in [*DEPLOY_FILES, *ROOT.joinpath("prime_ray").rglob("*.py"),
                                                 ROOT / "Makefile"])
    ray_own = {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "HF_HOME", "HF_HUB_OFFLINE",
               "TRANSFORMERS_OFFLINE"}
    for name in _documented_variables() - ray_own:
        assert name in sources, f"docs/configuration.md documents {name}, which nothing reads"


def test_deploy_guide_names_every_cluster_config_and_manifest():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for path in [*ROOT.joinpath("cluster").glob("*.yaml"), *ROOT.joinpath("deploy", "kuberay").glob("*.yaml")]:
        assert path.name in guide, f"docs/deploy.md does not mention {path.name}"
