"""The ingest worker process: start, readiness, a bounded graceful stop, and a crash-safe restart.

:func:`run` (``streamrec ingest``) checks the broker settings and login first, builds the app
(``app.py``), discards the local tables if the previous process did not stop cleanly, starts the
ops endpoints and runs Faust's worker until SIGINT/SIGTERM. Faust's graceful stop commits the
offsets (after the commit hook, ``commit.py``) and flushes the producer; only then is the clean-stop
marker written, so its absence at the next start means the local tables may hold changes their
changelogs never got (:func:`discard_tables_after_crash`).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import faust

from streamrec.ingest.app import APP_ID, create_app, kafka_urls
from streamrec.shared.gc_pauses import freeze_startup_objects, watch_gc_pauses
from streamrec.shared.logs import get_logger
from streamrec.shared.ops import start_ops_server
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import check_login

log = get_logger(__name__)

# Written in the worker's data directory after a clean stop, removed at start: its absence at start
# means the previous process crashed (kill -9, OOM, power loss), and the local tables cannot be trusted.
CLEAN_STOP_MARKER = "clean-stop"


class IngestWorker(faust.Worker):
    """A Faust worker that logs through our handlers and announces when it is ready."""

    def __init__(self, app: faust.App, stop_timeout: float, **kwargs: Any) -> None:
        # override_logging=False: keep the root handler configure_logging installed (JSON lines);
        # quiet + no spinner: no banner or progress output on stdout.
        super().__init__(app, quiet=True, override_logging=False, redirect_stdouts=False, **kwargs)
        self.spinner = None
        self.started_at = time.monotonic()
        self.ready = False
        self.stop_timeout = stop_timeout
        self._stop_deadline: threading.Timer | None = None

    def _schedule_shutdown(self, signal: Any) -> None:
        """Faust's graceful stop on SIGINT/SIGTERM, bounded: after ``stop_timeout`` the process exits.

        Faust's stop commits offsets and flushes the producer, which waits for the broker without
        end; a worker told to stop while its broker is gone would never exit. The deadline runs in a
        thread, since the event loop may be the thing that is stuck.
        """
        if self._stop_deadline is None:
            self._stop_deadline = threading.Timer(self.stop_timeout, self._give_up_stopping)
            self._stop_deadline.daemon = True
            self._stop_deadline.start()
        super()._schedule_shutdown(signal)

    def _give_up_stopping(self) -> None:
        consumer = self.app.consumer
        # What the next start reads again: everything after each partition's committed offset.
        reread = {
            f"{tp.topic}[{tp.partition}]": {
                "from_offset": committed,
                "read_up_to": consumer._read_offset.get(tp),
            }
            for tp, committed in sorted(consumer._committed_offset.items())
        }
        log.error(
            "ingest did not stop within the stop timeout: exiting without a clean stop "
            "(the next start rebuilds the tables and reads again from the committed offsets)",
            extra={"stop_timeout_s": self.stop_timeout, "next_start_reads_again": reread},
        )
        logging.shutdown()  # the line above must reach the log before the process ends
        os._exit(1)

    def readiness(self) -> str | None:
        """None once the worker joined its group and recovered its tables (for /readyz)."""
        return None if self.ready else "starting: joining the consumer group, recovering tables"

    async def on_startup_finished(self) -> None:
        """Called by Faust once the consumer joined the group and tables are recovered."""
        await super().on_startup_finished()
        freeze_startup_objects()
        watch_gc_pauses()
        self.ready = True
        log.info(
            "ingest ready",
            extra={"startup_seconds": round(time.monotonic() - self.started_at, 2), "app_id": APP_ID},
        )


def run(settings: Settings) -> None:
    """Run the ingest worker until SIGINT/SIGTERM, then stop gracefully (commit offsets, flush)."""
    kafka_urls(settings)  # fail with one clear line before anything starts
    check_login(settings)  # likewise for a refused SASL login / TLS handshake
    (settings.data_dir / "ingest").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = create_app(settings)
    log.info(
        "ingest starting",
        extra={"bootstrap": settings.kafka_bootstrap, "input": settings.topic_interactions, "app_id": APP_ID},
    )
    marker = settings.data_dir / "ingest" / CLEAN_STOP_MARKER
    discard_tables_after_crash(Path(app.conf.tabledir), marker)
    worker = IngestWorker(app, stop_timeout=settings.ingest_stop_timeout_seconds)
    start_ops_server(settings, alive=lambda: None, ready=worker.readiness)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode exits via SystemExit; a clean stop is not an error for callers
        if exc.code not in (0, None):
            raise
    marker.touch()  # only reached after Faust stopped cleanly: offsets committed, changelogs flushed


def discard_tables_after_crash(tables_dir: Path, marker: Path) -> None:
    """Delete the local table state unless the previous process stopped cleanly (``marker`` exists).

    Faust writes a table change to RocksDB at once but sends it to the changelog asynchronously,
    and it records the changelog offset a store holds only when the broker acknowledged it. After
    kill -9 the store can therefore hold changes the changelog never got, for events whose offsets
    were not committed either: on restart those events are re-delivered, found in the user's
    de-duplication window and dropped, so the features and item events they should have produced
    are never sent. Rebuilding the tables from the changelogs (what Kafka Streams does after an
    unclean exit) makes the state exactly what was durably announced, and the re-delivered events
    are applied again, once.
    """
    if tables_dir.exists() and not marker.exists():
        log.warning(
            "the last run did not stop cleanly: rebuilding tables from their changelogs",
            extra={"tables": str(tables_dir)},
        )
        shutil.rmtree(tables_dir)
    marker.unlink(missing_ok=True)  # a crash of this process must be detected at the next start
