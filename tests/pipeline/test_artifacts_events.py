import shutil

from prime_ray.pipeline.artifacts import JobArtifacts
from prime_ray.pipeline.events import EventLog, read_events


def test_local_root_layout(tmp_path):
    art = JobArtifacts(str(tmp_path), "job")
    assert art.job_dir == tmp_path / "job" and art.uri == str(tmp_path / "job")
    (art.stage_dir("ingest") / "x.txt").write_text("1")
    assert art.reset_stage("ingest").exists() and not (art.job_dir / "ingest" / "x.txt").exists()


def test_remote_root_mirrors_stages(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIME_RAY_CACHE_DIR", str(tmp_path / "cache"))
    art = JobArtifacts("mock:///bucket/prefix", "job")
    assert art.uri == "mock:///bucket/prefix/job"
    (art.stage_dir("ingest") / "examples.parquet").write_bytes(b"data")
    art.push("ingest")
    info = art._fs.get_file_info("bucket/prefix/job/ingest/examples.parquet")
    assert info.size == 4

    shutil.rmtree(art.job_dir)  # a new machine: the local mirror is empty
    art.job_dir.mkdir(parents=True)
    art.pull()
    assert (art.job_dir / "ingest" / "examples.parquet").read_bytes() == b"data"


def test_events_cursor_resumes_and_skips_partial_lines(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("job_started")
    log.for_stage("ingest").update(1, 4, rows=10)
    events = list(read_events(log.path))
    assert [e.kind for _, e in events] == ["job_started", "progress"]
    assert events[1][1].metrics == {"rows": 10} and events[1][1].total == 4

    cursor = events[-1][0]
    with log.path.open("a") as f:
        f.write('{"kind": "log", "mess')  # a writer mid-line
    assert list(read_events(log.path, cursor)) == []
    with log.path.open("a") as f:
        f.write('age": "hi"}\nnot json\n')
    later = list(read_events(log.path, cursor))
    assert [e.message for _, e in later] == ["hi"]  # the foreign line is passed over


def test_event_log_pickles_without_its_listener(tmp_path):
    import pickle

    seen = []
    log = EventLog(tmp_path / "e.jsonl", listener=seen.append)
    log.emit("log", message="a")
    clone = pickle.loads(pickle.dumps(log.for_stage("train")))
    clone.info("from a worker")
    assert len(seen) == 1
    assert [e.message for _, e in read_events(tmp_path / "e.jsonl")] == ["a", "from a worker"]
