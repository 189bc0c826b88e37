"""Where an ingest worker's time goes: a sampling profile of one worker draining a pre-filled topic.

Not a throughput figure but the evidence behind figure 1: ``py-spy`` (a dev dependency) attaches
to a running ``streamrec ingest`` worker once it is ready, samples every thread's stack 100 times
a second for a fixed time while the worker drains the topic, and each sample is attributed to the
first part of the pipeline its stack passes through (:data:`PARTS`, checked in order).

``BENCH_PROFILE_EVENTS`` sets the number of events (default 60,000; quick mode 3,000); the profile
covers ``BENCH_PROFILE_SECONDS`` (default 20; quick mode 2) of draining.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import Section
from bench.ingest import filled_broker, is_ready, start_workers, synthetic_events

# (part of the pipeline, substrings of a stack that mark it), first match wins: a table write
# inside fold_run is the agent's time.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    (
        "agent `build_features`: validate, fold into user state, table writes, features messages",
        ("fold_run",),
    ),
    ("Faust: runs of fetched records (transport.py)", ("transport.py",)),
    ("agent `count_popularity`", ("count_popularity",)),
    ("Faust: producer buffer (table changelog messages)", ("ProducerBuffer",)),
    ("aiokafka: producer sender (requests to the broker)", ("aiokafka/producer/",)),
    ("aiokafka: consumer fetch thread", ("WorkerThread.run", "aiokafka/consumer/")),
    ("Faust: hand-over of fetched messages to streams", ("_drain_messages",)),
    ("Faust: stream iteration, acks, batching", ("faust/streams.py",)),
    ("Faust: offset commits, tables' bookkeeping", ("commit", "faust/tables/")),
    ("event loop waiting for I/O (select)", ("EpollSelector.select",)),
]
OTHER = "other (event loop, timers, logging, metrics)"


def attribute(raw_profile: str) -> dict[str, int]:
    """Samples per part of the pipeline, from py-spy's ``--format raw`` output (``stack count`` lines)."""
    samples: collections.Counter[str] = collections.Counter()
    for line in raw_profile.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        part = next((name for name, marks in PARTS if any(mark in stack for mark in marks)), OTHER)
        samples[part] += int(count)
    return dict(samples)


def _profile(pid: int, seconds: int, output: Path) -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
    # Blocking (py-spy pauses the worker for each sample): without the pause, stacks read while
    # they change come out torn, and a third of the samples could not be attributed.
    command += ["--format", "raw", "--output", str(output)]
    subprocess.run(command, check=True, capture_output=True, timeout=seconds + 60)
    return output.read_text(encoding="utf-8")


def run(quick: bool) -> list[Section]:
    """The profile section: a table of where the worker's samples fell."""
    n_events = 3_000 if quick else int(os.environ.get("BENCH_PROFILE_EVENTS", "60000"))
    seconds = 2 if quick else int(os.environ.get("BENCH_PROFILE_SECONDS", "20"))
    with filled_broker(synthetic_events(n_events)) as (settings, run_dir, _):
        (worker,) = start_workers(settings, run_dir, 1)
        try:
            deadline = time.monotonic() + 120
            while not is_ready(worker):
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(f"ingest never got ready; log: {worker.log_tail()}")
                time.sleep(0.2)
            samples = attribute(_profile(worker.pid, seconds, run_dir / "profile.txt"))
        finally:
            worker.stop()
    total = sum(samples.values()) or 1
    every_part = {part: samples.get(part, 0) for part, _ in PARTS} | {OTHER: samples.get(OTHER, 0)}
    # Every part gets a row, 0% included, so the table has the same rows however short the sample.
    rows = [
        f"| {part} | {count / total:.1%} |"
        for part, count in sorted(every_part.items(), key=lambda kv: -kv[1])
    ]
    command = (
        ("" if quick or n_events == 60_000 else f"BENCH_PROFILE_EVENTS={n_events} ")
        + "python -m bench --only ingest_profile"
        + (" --quick" if quick else "")
    )
    description = "\n".join(
        [
            f"One worker draining {n_events:,} pre-filled events (as in figure 1), sampled by py-spy for "
            f"{seconds} s once it was ready: {total:,} samples over all its threads. Each sample counts "
            "for the first part of the pipeline its stack passes through.",
            "",
            "| part of the pipeline | share of samples |",
            "|---|---|",
            *rows,
        ]
    )
    return [Section("Where an ingest worker's time goes (profile behind figure 1)", command, [], description)]
