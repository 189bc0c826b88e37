"""PNG plots for the results page: a latency CDF and throughput bars (figure against baseline).

Each helper takes the data and a path from :func:`bench.harness.image_path`, writes the PNG and
returns what :attr:`bench.harness.Section.images` wants (the path relative to the page).
Matplotlib's object API is used without pyplot, so no GUI backend or global state is involved.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure as Canvas

from bench.harness import Figure, page_relative

# Linear bars hide a 1,000x gap; beyond this max/min spread the value axis is logarithmic.
LOG_SCALE_SPREAD = 50.0


def _save(canvas: Canvas, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.savefig(path, dpi=110, bbox_inches="tight")
    return page_relative(path)


def latency_cdf(
    series: Mapping[str, Sequence[float]],
    path: Path,
    *,
    title: str,
    unit: str = "ms",
    marks: Sequence[float] = (50, 99, 99.9),
) -> str:
    """Empirical CDFs of latency samples, one line per label, on a log x axis; dotted lines mark
    the ``marks`` percentiles. Returns the image path for ``Section.images``."""
    canvas = Canvas(figsize=(7, 4.2))
    ax = canvas.subplots()
    for label, samples in series.items():
        ordered = np.sort(np.asarray(samples, dtype=float))
        if not len(ordered):
            continue
        share = np.arange(1, len(ordered) + 1) / len(ordered)
        ax.step(ordered, share * 100, where="post", label=f"{label} (n={len(ordered):,})")
    for mark in marks:
        ax.axhline(mark, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"latency ({unit}, log scale)")
    ax.set_ylabel("share of events (%)")
    # The tail is what matters: p99 and p99.9 must not be squeezed against the top edge.
    ax.set_yscale("function", functions=(_tail_forward, _tail_inverse))
    ax.set_yticks([0, 50, 90, 99, 99.9])
    ax.set_yticklabels(["0", "50", "90", "99", "99.9"])
    ax.set_ylim(0, 99.95)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    # Below the axes: inside, it would cover the curves' tails.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="small", frameon=False)
    return _save(canvas, path)


def _tail_forward(percent: np.ndarray) -> np.ndarray:
    # -log10(1 - p): 0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3; clipped to stay finite at 100.
    return -np.log10(np.clip(1 - np.asarray(percent) / 100, 1e-6, None))


def _tail_inverse(value: np.ndarray) -> np.ndarray:
    return (1 - 10 ** (-np.asarray(value))) * 100


def throughput_bars(figures: Sequence[Figure], path: Path, *, title: str) -> str:
    """Grouped bars per figure: its median and its baseline's median, whiskers min–max of the
    runs. The figures must share one unit. Returns the image path for ``Section.images``."""
    units = {fig.unit for fig in figures}
    if len(units) != 1:
        raise ValueError(f"throughput_bars needs figures of one unit, got {sorted(units)}")
    canvas = Canvas(figsize=(max(5.0, 1.3 * len(figures) + 2.5), 4.2))
    ax = canvas.subplots()
    x = np.arange(len(figures))
    width = 0.38
    values: list[float] = []
    for offset, kind in ((-width / 2, "figure"), (width / 2, "baseline")):
        runs = [fig.runs if kind == "figure" else fig.baseline_runs for fig in figures]
        medians = [statistics.median(r) if r else 0.0 for r in runs]
        low = [m - min(r) if r else 0.0 for m, r in zip(medians, runs, strict=True)]
        high = [max(r) - m if r else 0.0 for m, r in zip(medians, runs, strict=True)]
        label = "measured" if kind == "figure" else _baseline_label(figures)
        ax.bar(x + offset, medians, width, yerr=[low, high], capsize=3, label=label)
        values += [m for m in medians if m > 0]
    unit = units.pop()
    if values and max(values) / min(values) > LOG_SCALE_SPREAD:
        ax.set_yscale("log")
        unit += ", log scale"
    ax.set_xticks(x)
    ax.set_xticklabels([_wrap(fig.name) for fig in figures], fontsize="small")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(canvas, path)


def _baseline_label(figures: Sequence[Figure]) -> str:
    names = {fig.baseline_name for fig in figures if fig.baseline_runs}
    return f"baseline: {names.pop()}" if len(names) == 1 else "baseline"


def _wrap(text: str, width: int = 22) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
