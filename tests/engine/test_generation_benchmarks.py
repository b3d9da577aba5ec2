"""The GPU generation benchmark starts and reports on CPU with the tiny model (figures not asserted)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_generation_runs_on_cpu_with_tiny(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["gpu_generation.py", "--tiny", "--device", "cpu"])
    importlib.import_module("gpu_generation").main()
    out = capsys.readouterr().out
    assert "tiny-test on CPU" in out
    assert len(re.findall(r"batch +[24] +(stock|engine) +[0-9.]+ tok/s", out)) == 4
    assert re.search(r"^RATIO engine_vs_stock=[0-9.]+$", out.strip().splitlines()[-1])
