"""A cancelled job's progress shows the stage it stopped in as cancelled, not running."""

from prime_ray.pipeline.events import EventLog, read_events
from prime_ray.service.progress import JobProgress


def test_job_cancelled_marks_its_stage(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("job_started", metrics={"stages": ["ingest", "traces", "train"]})
    log.emit("stage_finished", "ingest", metrics={"users": 4})
    log.emit("stage_started", "traces")
    log.emit("progress", "traces", done=1, total=3)
    log.emit("job_cancelled", "traces", message="stopped (SIGTERM)")
    progress = JobProgress()
    for _, event in read_events(log.path):
        progress.apply(event)
    assert progress.progress["traces"]["state"] == "cancelled" and progress.stage is None
    assert progress.progress["train"]["state"] == "pending" and progress.error is None
