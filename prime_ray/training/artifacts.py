"""Where the train stage puts things, and its metrics log.

    train/<student>/adapter/     the LoRA adapter (PEFT `save_pretrained` format)
    train/<student>/merged/      the base model with the adapter merged in (when asked for)
    train/checkpoints/           Ray Train run storage (DeepSpeed checkpoints), for resuming
    train/metrics.jsonl          one record per logged step: {"student", "step", "loss", "direct", ...}
    train/curves.png             both loss terms and the learning rate against the step
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from prime_ray.files import append_line, atomic_write

Student = Literal["prime", "fast"]
STUDENTS: tuple[Student, ...] = ("prime", "fast")
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def student_dir(train_dir: Path, student: Student) -> Path:
    if student not in STUDENTS:
        raise ValueError(f"student must be one of {', '.join(STUDENTS)}, got {student!r}")
    return Path(train_dir) / student


def adapter_dir(train_dir: Path, student: Student) -> Path:
    """The PEFT adapter folder of a student (load with PeftModel.from_pretrained)."""
    return student_dir(train_dir, student) / "adapter"


def trained_adapters(train_dir: Path) -> dict[str, Path]:
    """The students whose adapter was saved under `train_dir`: name -> adapter folder, in STUDENTS order."""
    found = {student: adapter_dir(train_dir, student) for student in STUDENTS}
    return {student: path for student, path in found.items() if (path / "adapter_config.json").is_file()}


def merged_dir(train_dir: Path, student: Student) -> Path:
    """The merged full model of a student (when spec.train.merge_adapter)."""
    return student_dir(train_dir, student) / "merged"


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended in one write (safe next to concurrent appends of other lines)."""
    append_line(path, json.dumps(record, sort_keys=True))


def read_metrics(path: Path, student: Student | None = None) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if student is None or r.get("student") == student]


def rewind_metrics(path: Path, student: Student, step: int) -> None:
    """Forget `student`'s records after `step`: a run resumed from that step logs them again."""
    if not Path(path).exists():
        return
    kept = [r for r in read_metrics(path) if r.get("student") != student or r["step"] <= step]
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
