"""A job's artifact directory: one folder per stage, its manifest, and the events file.

The root is a local directory or a pyarrow filesystem URI (`s3://bucket/prefix`, `gs://...`).
Stages always read and write local paths; for a remote root, a local mirror under the cache is
filled from the remote before the job and each finished stage is uploaded after it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from prime_ray.paths import cache_dir

EVENTS_FILE = "events.jsonl"
MANIFEST_FILE = "manifest.json"


def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


class JobArtifacts:
    def __init__(self, root: str, job_name: str):
        self.root = root
        self.job_name = job_name
        self._remote: str | None  # the job's folder on the remote filesystem; None for a local root
        if _is_remote(root):
            import pyarrow.fs as pafs

            self._fs, base = pafs.FileSystem.from_uri(root)
            self._remote = f"{base.rstrip('/')}/{job_name}"
            digest = hashlib.sha256(root.encode()).hexdigest()[:12]
            self.job_dir = cache_dir("artifacts", digest, job_name)
        else:
            self._fs, self._remote = None, None
            self.job_dir = Path(root.removeprefix("file://")).expanduser().resolve() / job_name
        self.job_dir.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        """Where the artifacts live, as a user would name it."""
        return f"{self.root.rstrip('/')}/{self.job_name}" if self._fs else str(self.job_dir)

    @property
    def events_path(self) -> Path:
        return self.job_dir / EVENTS_FILE

    def stage_dir(self, stage: str) -> Path:
        path = self.job_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def reset_stage(self, stage: str) -> Path:
        shutil.rmtree(self.job_dir / stage, ignore_errors=True)
        return self.stage_dir(stage)

    def pull(self) -> None:
        """Mirror what the remote root already holds for this job (manifests and outputs)."""
        if self._fs is None:
            return
        import pyarrow.fs as pafs

        if self._fs.get_file_info(self._remote).type == pafs.FileType.NotFound:
            return
        pafs.copy_files(self._remote, str(self.job_dir), source_filesystem=self._fs,
                        destination_filesystem=pafs.LocalFileSystem())

    def push(self, relative: str | None = None) -> None:
        """Upload a stage folder (or the whole job folder) to the remote root."""
        if self._fs is None:
            return
        import pyarrow.fs as pafs

        local = self.job_dir / relative if relative else self.job_dir
        remote = f"{self._remote}/{relative}" if relative else self._remote
        if local.is_dir():
            self._fs.create_dir(remote, recursive=True)
        pafs.copy_files(str(local), remote, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self._fs)
