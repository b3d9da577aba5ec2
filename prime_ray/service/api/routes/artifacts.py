"""A job's artifact files: list, download (confined to the job's folder)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from prime_ray.service.api.deps import JobDep, SettingsDep
from prime_ray.service.api.errors import ApiError, errors
from prime_ray.service.follower import job_dir
from prime_ray.service.models import ArtifactList, ArtifactOut

router = APIRouter(tags=["artifacts"])


@router.get("/jobs/{job_id}/artifacts", response_model=ArtifactList, operation_id="listArtifacts",
            summary="The job's artifact files", responses=errors(404))
def list_artifacts(job: JobDep, settings: SettingsDep) -> ArtifactList:
    return ArtifactList(job_id=job.id, artifacts=_artifact_files(job_dir(settings, job.id)))


@router.get("/jobs/{job_id}/artifacts/{path:path}", response_class=FileResponse, operation_id="downloadArtifact",
            summary="Download one artifact file",
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                       **errors(404)})
def download_artifact(job: JobDep, path: str, settings: SettingsDep) -> FileResponse:
    """`path` is relative to the job's artifact folder; anything resolving outside it is 404."""
    target = confined(job_dir(settings, job.id), path)
    if target is None:
        raise ApiError(404, f"job {job.id} has no artifact {path!r}")
    return FileResponse(target, media_type="application/octet-stream", filename=target.name)


def confined(root: Path, relative: str) -> Path | None:
    """The file `relative` names under `root`, or None if it is missing or resolves outside `root`."""
    try:
        base = root.resolve()
        target = (base / relative).resolve()
        if target.is_relative_to(base) and target.is_file():
            return target
    except (OSError, ValueError, RuntimeError):  # a name too long, an embedded NUL byte, a symlink loop
        pass
    return None


def _artifact_files(root: Path) -> list[ArtifactOut]:
    if not root.is_dir():
        return []
    base = root.resolve()
    files = []
    for path in sorted(base.rglob("*")):
        target = confined(base, str(path.relative_to(base)))
        if target is None:  # a folder, or a link leading out of the job's folder
            continue
        try:
            stat = target.stat()
        except OSError:  # gone since the listing, or a link that cannot be followed
            continue
        files.append(ArtifactOut(
            path=path.relative_to(base).as_posix(), size=stat.st_size,
            modified_at=dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc),
        ))
    return files
