"""Python's garbage collector: kept out of the event path, and watched.

A full (generation 2) collection walks every container object the process tracks: the modules,
classes and functions of Faust, aiokafka, onnxruntime's bindings… as much as the data. In ingest
such pauses took 60-185 ms every few seconds at 1,000 events/s and found nothing to collect
(``collected: 0``), while every event in flight waited. :func:`freeze_startup_objects` moves what
exists once a service is up into the permanent generation, which no collection walks again
(``gc.freeze``; reference counting still frees those objects, only cycles among them would stay).
:func:`watch_gc_pauses` times every collection into ``streamrec_gc_pause_seconds`` and logs the
long ones, so a latency tail can be told apart from a slow step.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

from streamrec.shared.logs import get_logger

log = get_logger(__name__)

GC_PAUSE_SECONDS = Histogram(
    "streamrec_gc_pause_seconds",
    "Time one garbage collection stopped the process, by generation.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

_started: list[float] = []


def freeze_startup_objects() -> None:
    """Collect once, then exclude every object alive now from all later collections."""
    gc.collect()
    gc.freeze()
    log.info("startup objects frozen out of garbage collection", extra={"frozen": gc.get_freeze_count()})


def watch_gc_pauses(log_over_seconds: float = 0.05) -> None:
    """Time every collection from now on; log those longer than ``log_over_seconds`` (once per process)."""
    if any(map(_is_the_watch, gc.callbacks)):
        return

    def _on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _started.append(time.perf_counter())
            return
        if not _started:
            return
        seconds = time.perf_counter() - _started.pop()
        generation = info.get("generation", -1)
        GC_PAUSE_SECONDS.labels(str(generation)).observe(seconds)
        if seconds > log_over_seconds:
            log.warning(
                "long garbage collection pause",
                extra={
                    "generation": generation,
                    "pause_ms": round(seconds * 1000, 1),
                    "collected": info.get("collected"),
                },
            )

    gc.callbacks.append(_on_gc)


def stop_watching_gc_pauses() -> None:
    """Stop timing collections: a process about to exit with an error line ends on that line,
    not on a pause logged by the collections of its shutdown."""
    gc.callbacks[:] = [callback for callback in gc.callbacks if not _is_the_watch(callback)]


def _is_the_watch(callback: object) -> bool:
    """True for the callback :func:`watch_gc_pauses` installs."""
    return getattr(callback, "__name__", "") == "_on_gc"
