"""The training curves: both loss terms and the learning rate of each student, against the step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write a PNG with one panel per loss term and one for the learning rate (a line per student)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and servers
    import matplotlib.pyplot as plt

    students = sorted({r["student"] for r in records})
    colors = {student: f"C{i}" for i, student in enumerate(students)}  # one color per student in every panel
    panels = [("direct", "CE(y | direct)"), ("think", "CE(trace ⊕ y | personal-think)"), ("lr", "learning rate")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for student in students:
            points = sorted(
                (r["step"], r[key])
                for r in records
                if r["student"] == student and r.get(key) is not None  # None: no tokens of that term
            )
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o", markersize=3, label=student, color=colors[student])
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

