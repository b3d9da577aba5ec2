"""The report files from a synthetic result: written, parseable, and carrying every number."""

import json

from PIL import Image

from prime_ray.evaluation.metrics import Outcome
from prime_ray.evaluation.report import REPORT_FILES, Report, summarize_mode, write_report
from prime_ray.spec import RatingTask


def _outcomes(offset: int, traced: bool) -> list[Outcome]:
    gold = ["5", "4", "3", "4", "2", "1"]
    pred = [str(min(5, int(g) + offset)) for g in gold]
    pred[0] = None  # one unparsed answer
    trace = "the user rates dramas high and comedies low" if traced else None
    return [Outcome(f"u{i}/q", g, p, trace=trace) for i, (g, p) in enumerate(zip(gold, pred))]


def _report() -> Report:
    task = RatingTask(min=1, max=5)
    results = [
        summarize_mode(task, mode, split, _outcomes(offset, traced), n_resamples=200, seed=0)
        for split in ("test_query", "test_user")
        for mode, offset, traced in (("generalist-direct", 1, False), ("generalist-think", 0, True))
    ]
    samples = [{"mode": "generalist-think", "split": "test_query", "example_id": "u0/q", "gold": "5",
                "predicted": None, "trace": "the user rates", "text": "<think>the user rates"}]
    return Report(job="demo", spec_hash="abc123", model={"name_or_path": "tiny-test"},
                  data={"source": {"format": "jsonl"}}, task=task, results=results,
                  skipped_modes={"fast-direct": "no fast-thinking student was trained"},
                  counts={"examples": 12}, samples=samples, bootstrap_samples=200, seed=0)


def test_report_files_are_written_and_parse(tmp_path):
    paths = write_report(tmp_path, _report())
    assert sorted(paths) == sorted(REPORT_FILES) and all(p.stat().st_size > 0 for p in paths.values())

    report = json.loads(paths["report.json"].read_text())
    assert report["primary_metric"] == "mae" and report["spec_hash"] == "abc123"
    assert report["splits"] == ["test_query", "test_user"]
    think = report["results"]["test_user"]["generalist-think"]
    # errors: 4 (unparsed) + 0·5 -> MAE 4/6
    assert think["n"] == 6 and think["parse_failures"] == 1
    assert abs(think["metrics"]["mae"]["value"] - 4 / 6) < 1e-9
    assert think["metrics"]["mae"]["low"] <= think["metrics"]["mae"]["value"] <= think["metrics"]["mae"]["high"]
    assert think["health"]["repetition"]["value"] == 0.0
    assert report["results"]["test_query"]["generalist-direct"]["health"]["repetition"]["value"] is None
    assert report["skipped_modes"] == {"fast-direct": "no fast-thinking student was trained"}

    markdown = paths["report.md"].read_text()
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ") and "failed)" in line]
    assert len(table_rows) == 2 * 2  # two modes per split
    # paired: think − direct per example = [0, −1, −1, −1, −1, −1], mean −5/6; a resample's mean is −k/6 with
    # k ~ Binomial(6, 5/6): P(k ≤ 2) ≈ 0.009 < 2.5 % ≤ P(k ≤ 3) ≈ 0.062, P(k = 6) ≈ 0.33: interval [−1, −0.5]
    paired = [line for line in markdown.splitlines() if line.startswith("| generalist-think | generalist-direct |")]
    assert len(paired) == 2 and paired[0].endswith("| 6 | -0.833 [-1.000, -0.500] | generalist-think |")
    assert "1. generic thinking does not beat answering directly" in markdown and "**reversed**" in markdown
    assert markdown.count("**not evaluated**") == 2 * 2  # claims 2 and 3 need the students
    assert report["claims"][0]["verdict"] == "reversed" and report["paired"][0]["favours"] == "generalist-think"
    assert "**generalist-think**" in markdown  # the best MAE is marked
    assert "≤ 0 (data.task.tolerance)" in markdown
    assert "0.667 [" in markdown and "(1 failed)" in markdown and "fast-direct" in markdown

    with Image.open(paths["report.png"]) as image:
        assert image.format == "PNG" and image.size[0] > 300

    lines = paths["samples.jsonl"].read_text().splitlines()
    assert [json.loads(line)["example_id"] for line in lines] == ["u0/q"]
