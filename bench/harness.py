"""What every benchmark shares: repeated measurement and timing, progress lines, the machine, and the
results page. Starting and stopping what a benchmark measures is in bench/stack.py.

A benchmark is a function ``(quick: bool) -> list[Figure]``. Each :class:`Figure` is a measured
quantity with its runs (median and min–max are reported) and, where it has one, the baseline
measured in the same run on the same machine, so the ratio survives a noisy machine.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RUNS = 3  # every figure is the median of at least this many runs
PROGRESS_SECONDS = 5.0  # between progress lines of a long wait or a paced run
DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE = DOCS / "benchmarks.md"
FRAGMENTS = DOCS / "benchmarks"  # one Markdown fragment per benchmark, and the PNGs; the page joins them


@dataclass
class Figure:
    """One reported number: runs of the thing measured, and of its baseline if any."""

    name: str
    unit: str
    runs: list[float]
    baseline_name: str | None = None
    baseline_runs: list[float] = field(default_factory=list)
    target: str = ""  # what the project aims for, in words ("≥ 20,000 ev/s"), or ""
    note: str = ""

    @property
    def median(self) -> float:
        """Median of the runs."""
        return statistics.median(self.runs)

    @property
    def ratio(self) -> float | None:
        """Median / baseline median (None without a baseline)."""
        if not self.baseline_runs:
            return None
        return self.median / statistics.median(self.baseline_runs)


@dataclass
class Section:
    """The figures of one benchmark, with the command that reproduces them."""

    title: str
    command: str
    figures: list[Figure]
    description: str = ""
    images: list[str] = field(default_factory=list)  # PNG paths relative to the results page


def repeat(measure: Callable[[], float], runs: int = RUNS, warmup: int = 1) -> list[float]:
    """Call ``measure`` ``warmup`` times (discarded), then ``runs`` times; return the results."""
    for _ in range(warmup):
        measure()
    return [measure() for _ in range(runs)]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, nearest-rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_figure(
    name: str,
    runs: list[list[float]],
    baseline_name: str,
    baseline_runs: list[list[float]],
    q: float,
    target: str,
) -> Figure:
    """The q-th percentile of each run's latencies (seconds) against the same of a baseline's runs, in ms."""
    return Figure(
        name,
        "ms",
        [percentile(run, q) * 1000 for run in runs],
        baseline_name,
        [percentile(run, q) * 1000 for run in baseline_runs],
        target=target,
    )


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def latencies(read: Callable[[], object], requests: int) -> list[float]:
    """Seconds each of ``requests`` sequential calls of ``read`` takes."""
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        read()
        timings.append(time.perf_counter() - started)
    return timings


def log_progress(line: str) -> None:
    """Tell the person running the benchmark how far it got (stderr: the page is on stdout in quick mode)."""
    print(line, file=sys.stderr, flush=True)


def machine() -> str:
    """Cores, memory, CPU and Python: the context every figure needs."""
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}, {platform.system()}"


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render_section(section: Section) -> str:
    """One benchmark's part of the results page (Markdown), stamped with date and machine."""
    lines = [
        f"## {section.title}",
        "",
        f"Command: `{section.command}` — run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.",
        "",
    ]
    if section.description:
        lines += [section.description, ""]
    if section.figures:
        lines += [
            "| figure | median | min–max | baseline (median) | ratio | target |",
            "|---|---|---|---|---|---|",
        ]
    for fig in section.figures:
        baseline = "–"
        if fig.baseline_runs:
            baseline = f"{fig.baseline_name}: {_number(statistics.median(fig.baseline_runs))} {fig.unit}"
        ratio = "–" if fig.ratio is None else f"{fig.ratio:.3g}×"
        name = fig.name + (f" ({fig.note})" if fig.note else "")
        lines.append(
            f"| {name} | {_number(fig.median)} {fig.unit} | {_number(min(fig.runs))}–{_number(max(fig.runs))} "
            f"| {baseline} | {ratio} | {fig.target or '–'} |"
        )
    lines.append("")
    for image in section.images:
        lines += [f"![{section.title}]({image})", ""]
    return "\n".join(lines)


PAGE_HEADER = f"""# Benchmarks

Written by `python -m bench` (one section per benchmark: `python -m bench --only NAME` refreshes
that section and keeps the others). Each figure is the median of {RUNS} or more runs, with
min–max; a ratio compares it with a baseline measured in the same run on the same machine (the
machine is shared and noisy: ratios are more telling than absolute numbers).
"""


def render_page(fragments: list[str]) -> str:
    """The whole results page from the sections' fragments."""
    return "\n".join([PAGE_HEADER, *fragments])


_quick_images: tempfile.TemporaryDirectory[str] | None = None


def image_path(name: str, quick: bool) -> Path:
    """Where a benchmark writes its PNG ``name``: next to the page, or, in quick mode, into a
    temporary folder removed at exit (quick runs never overwrite published figures)."""
    global _quick_images
    if not quick:
        return FRAGMENTS / name
    if _quick_images is None:
        _quick_images = tempfile.TemporaryDirectory(prefix="bench-quick-")
    return Path(_quick_images.name) / name


def page_relative(path: Path) -> str:
    """``path`` as the results page links it: relative to the page when under docs/, else absolute."""
    try:
        return path.resolve().relative_to(DOCS).as_posix()
    except ValueError:
        return str(path)


def write(path: Path, text: str) -> None:
    """Write the page (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
