"""Stage manifests: what a finished stage read, how it was configured, and what it wrote.

A stage is skipped when its manifest's config hash and input hash match the current ones and its
outputs are still there, unchanged. The manifest is written last, atomically: a stage that crashed
has none, and runs again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from prime_ray.files import atomic_write
from prime_ray.paths import file_digest
from prime_ray.pipeline.artifacts import MANIFEST_FILE
from prime_ray.spec import config_hash


class Manifest(BaseModel):
    stage: str
    config_hash: str
    input_hash: str
    outputs: dict[str, str]  # relative path -> sha256
    counts: dict[str, int] = {}
    metrics: dict[str, Any] = {}
    started_at: float
    finished_at: float
    seconds: float
    prime_ray_version: str

    @property
    def digest(self) -> str:
        """What a downstream stage's input hash is built from."""
        return config_hash({"config": self.config_hash, "input": self.input_hash, "outputs": self.outputs})


def output_digests(stage_dir: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    """sha256 of each declared output; folders are walked. A missing output is an error."""
    digests: dict[str, str] = {}
    for rel in outputs:
        path = stage_dir / rel
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digests[str(file.relative_to(stage_dir))] = file_digest(file)
        elif path.is_file():
            digests[rel] = file_digest(path)
        else:
            raise FileNotFoundError(f"declared output {rel!r} was not written")
    return digests


def read_manifest(stage_dir: Path) -> Manifest | None:
    path = stage_dir / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValueError:
        return None  # unreadable: treat as absent, the stage runs again


def write_manifest(stage_dir: Path, manifest: Manifest) -> None:
    atomic_write(stage_dir / MANIFEST_FILE, manifest.model_dump_json(indent=2))


def outputs_intact(stage_dir: Path, manifest: Manifest) -> bool:
    for rel, digest in manifest.outputs.items():
        path = stage_dir / rel
        if not path.is_file() or file_digest(path) != digest:
            return False
    return True

