"""The benchmark suite still runs (quick mode: small sizes, one pass; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(960)  # every benchmark's quick pass, with stack start-ups and a training each
def test_quick_benchmarks_run_and_report_every_section() -> None:
    published = {path: path.stat().st_mtime_ns for path in (REPO / "docs").rglob("benchmarks*")}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    titles = (
        "Ingest throughput per worker (figure 1)",
        "Ingest scale-out: two workers against one (figure 7)",
        "Where an ingest worker's time goes (profile behind figure 1)",
        "Freshness (figure 2)",
        "Broker cost per event (figure 8)",
        "End-to-end drain (figure 9)",
        "Capacity at the freshness bound (figure 12)",
        "Read latency (figure 3)",
        "Read latency (figure 3) — Redis Cluster, 3 primaries + 3 replicas",
        "Read latency (figure 3) — Sentinel group, 1 primary + 1 replica, 3 sentinels",
        "Freshness with the lists on a Redis Cluster (figure 2)",
        "Hiding an item (figure 10)",
        "Scoring throughput (figure 4)",
        "Training (figure 5)",
        "Memory at scale (figure 6)",
        "Embedded broker: request cost vs record batches (context)",
        "Anonymous session latency (figure 11)",
    )
    for title in titles:
        assert f"## {title}" in result.stdout
    assert "| onnxruntime, 1,000 items, batch 64 |" in result.stdout
    assert (
        "| agent `build_features`: validate, fold into user state, table writes, features messages |"
        in result.stdout
    )
    assert (
        "| Redis bytes per user, top-50, ids like i12345, as the scorer wrote them: MEMORY USAGE |"
        in result.stdout
    )
    assert "| publish → list in Redis, p99 |" in result.stdout
    assert "| publish → list in Redis Cluster, p99 |" in result.stdout
    assert "| client get(), category filter p99 |" in result.stdout
    assert "| hidden item gone from every read, p99 |" in result.stdout
    assert "| ListOffsets, 200 one-message batches |" in result.stdout
    assert "| events without an update | 0 events |" in result.stdout
    assert "| 40 events/s: events without their list rewritten | 0 events |" in result.stdout
    # Plots are drawn in quick mode too, into a temporary folder.
    assert "![Freshness (figure 2)](" in result.stdout and "freshness-cdf.png)" in result.stdout
    # Quick figures are printed, never published over the real ones.
    assert {path: path.stat().st_mtime_ns for path in (REPO / "docs").rglob("benchmarks*")} == published
