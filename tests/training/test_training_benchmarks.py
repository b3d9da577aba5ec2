"""The training benchmarks start and report (tiny shapes; their figures are not asserted)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _benchmark(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_gpu_train_step_runs_on_cpu_with_tiny(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_train_step.py", "--tiny"])
    _benchmark("gpu_train_step").main()
    out = capsys.readouterr().out
    assert "tokens/s" in out and "MFU: n/a" in out and "device: CPU" in out


def test_trace_like_data_mixes_short_direct_and_long_think_sequences():
    seqs = _benchmark("train_step").trace_like_sequences(200, vocab=1000)
    direct = [len(s) for s in seqs if s.term == "direct"]
    think = [len(s) for s in seqs if s.term == "think"]
    assert len(direct) == len(think) == 100 and max(direct) < min(think) + 100 and max(think) > 2 * max(direct)
    assert all(s.labels[-4:] == s.input_ids[-4:] for s in seqs)
