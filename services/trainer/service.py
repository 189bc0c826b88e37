"""The trainer service: reads the event stream into its local log and runs training cycles.

``train_once`` catches up on ``topic_user_features``, trains on the most recent
``train_window_events`` events, publishes the model to the registry and announces it on
``topic_models``. ``run`` does the same continuously until SIGINT/SIGTERM.

``run`` also trains on request: ``streamrec train --once`` beside it leaves a request in its event
log directory (shared/train_requests.py) instead of training a second model, and the next cycle,
started at once, answers it (requests.py says which cycle answers which request).

When ``run`` retrains (``train_trigger``): with ``any`` (the default), as soon as
``train_min_new_events`` events arrived since the last cycle, or ``train_interval_seconds`` passed
and at least one event arrived, whichever comes first; with ``all``, only when both hold. The first
model is trained under the same rule. Training uses the most recent ``train_window_events`` events,
minus those older than ``train_window_days`` (if set). The schedule survives restarts: the last
cycle's time and log position are read back from the newest model's manifest.

Stopping: the first SIGINT/SIGTERM lets a cycle in progress finish and then exits; a second one
abandons the cycle (the registry publishes atomically, so no half model is ever visible).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from confluent_kafka import Producer
from prometheus_client import Counter, Gauge

from streamrec.shared.kafka_config import client_config, require_bootstrap
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import ModelAnnouncement
from streamrec.shared.ops import start_ops_server
from streamrec.shared.registry import ModelIntegrityError, ModelManifest, ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import KafkaUnavailable
from streamrec.shared.train_requests import RequestBox
from streamrec.trainer.event_log import EventLog
from streamrec.trainer.requests import CycleRequests

if TYPE_CHECKING:
    from streamrec.trainer.cycle import CycleResult
    from streamrec.trainer.train import EpochCallback

log = get_logger(__name__)

# How often run() logs a status line while waiting for the next cycle.
STATUS_EVERY_SECONDS = 60.0
# Key of the manifest's data dict holding the log position the model was trained up to.
LOG_SEQ_KEY = "log_seq"


# --- metrics (Prometheus; served on STREAMREC_METRICS_PORT by the continuous trainer) ----------
CYCLES = Counter("streamrec_trainer_cycles_total", "Training cycles, by outcome.", ["outcome"])
CYCLE_SECONDS = Gauge("streamrec_trainer_last_cycle_seconds", "Duration of the last training cycle.")
HOLDOUT = Gauge(
    "streamrec_trainer_last_holdout",
    "Last cycle's gate metric: candidate and the served baseline.",
    ["model"],
)
LOG_EVENTS = Gauge("streamrec_trainer_log_events", "Events in the trainer's local log.")
LOG_POSITION = Gauge("streamrec_trainer_log_position", "Events read from the stream so far (log sequence).")


class NotEnoughData(ValueError):
    """The log holds too little data to train a model; the message says how much there is."""


class AnnouncementFailed(KafkaUnavailable):
    """A published model could not be announced on the models topic."""


def describe_window(events: pd.DataFrame, log_seq: int) -> dict[str, Any]:
    """The ``data_info`` of a training window: counts, time span and log position (JSON-ready)."""
    empty = events.empty
    return {
        "events": len(events),
        "users": int(events["user_id"].nunique()),
        "items": int(events["item_id"].nunique()),
        "window_start": None if empty else float(events["timestamp"].min()),
        "window_end": None if empty else float(events["timestamp"].max()),
        LOG_SEQ_KEY: log_seq,
    }


def within_days(events: pd.DataFrame, days: float) -> pd.DataFrame:
    """The events at most ``days`` older than the newest one (by event timestamp); all if days is 0."""
    if days <= 0 or events.empty:
        return events
    cutoff = float(events["timestamp"].max()) - days * 86_400
    return events[events["timestamp"] >= cutoff].reset_index(drop=True)


def announce(settings: Settings, manifest: ModelManifest, timeout: float = 30.0) -> None:
    """Tell the scorers on ``topic_models`` that ``manifest.version`` is in the registry."""
    bootstrap = require_bootstrap(settings)
    producer = Producer(client_config(settings, {"acks": "all", "message.timeout.ms": 30_000}))
    errors: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(str(error))

    message = ModelAnnouncement(version=manifest.version, created_at=manifest.created_at)
    producer.produce(settings.topic_models, value=message.to_json(), on_delivery=on_delivery)
    if producer.flush(timeout) or errors:
        reason = errors[0] if errors else f"not acknowledged after {timeout:.0f}s"
        raise AnnouncementFailed(
            f"model {manifest.version} is in the registry but announcing it on {settings.topic_models} "
            f"via Kafka at {bootstrap} failed ({reason})"
        )
    log.info("model announced", extra={"model_version": manifest.version, "topic": settings.topic_models})


def train_once(
    settings: Settings, event_log: EventLog | None = None, on_epoch: EpochCallback | None = None
) -> CycleResult:
    """Catch up on the stream, train one model on the recent window here, publish it, and, if the
    quality gate promotes it, announce it. ``on_epoch`` is told of every training epoch.

    Raises EventLogLocked when a trainer service holds the data dir's event log (ask it instead,
    as ``streamrec train --once`` does), NotEnoughData (a ValueError) when the log is too small.
    """
    require_bootstrap(settings)
    if event_log is None:
        with EventLog(settings) as own_log:
            return train_once(settings, own_log, on_epoch)
    event_log.catch_up()
    result = _train(settings, event_log, on_epoch)
    if result.promoted:
        announce(settings, result.manifest)
    return result


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run the continuous trainer until SIGINT/SIGTERM (or until ``stop`` is set)."""
    require_bootstrap(settings)
    stop = stop or threading.Event()
    opened: list[EventLog] = []
    start_ops_server(
        settings, alive=lambda: None, ready=lambda: None if opened else "starting: opening the event log"
    )
    with _stop_on_signals(stop), EventLog(settings) as event_log:
        opened.append(event_log)
        requests = RequestBox(event_log.directory)
        schedule = CycleSchedule.resume(settings, event_log.last_seq())
        log.info(
            "trainer started",
            extra={
                "events": event_log.count(),
                "interval_s": schedule.interval_seconds,
                "min_new_events": schedule.min_new_events,
                "window_events": settings.train_window_events,
            },
        )
        status_at = time.monotonic()
        while not stop.is_set():
            event_log.poll(max_messages=5000, timeout=1.0)
            LOG_POSITION.set(event_log.last_seq())
            asked = requests.pending()
            if asked or schedule.due(time.time(), event_log.last_seq()):
                _run_cycle(
                    settings, event_log, schedule, stop, CycleRequests(requests, asked, settings.epochs)
                )
            elif time.monotonic() - status_at > STATUS_EVERY_SECONDS:
                status_at = time.monotonic()
                log.info(
                    "trainer waiting",
                    extra={
                        "events": event_log.count(),
                        "new_events": schedule.new_events(event_log.last_seq()),
                        "seconds_since_cycle": (
                            round(time.time() - schedule.last_cycle_at, 1) if schedule.last_cycle_at else None
                        ),
                    },
                )
    log.info("trainer stopped")


@dataclass
class CycleSchedule:
    """When the next training cycle is due: enough time passed AND enough new events arrived."""

    interval_seconds: float
    min_new_events: int
    trigger: str = "any"  # "any": time or events, whichever first; "all": both
    last_cycle_at: float = 0.0  # epoch s of the last cycle; 0 = never
    last_cycle_seq: int = 0  # log position (EventLog.last_seq) the last cycle trained up to

    @classmethod
    def resume(cls, settings: Settings, log_seq: int) -> CycleSchedule:
        """The schedule as the newest model in the registry left it (or a fresh one)."""
        schedule = cls(settings.train_interval_seconds, settings.train_min_new_events, settings.train_trigger)
        registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings
        try:
            version = registry.newest_version()
            manifest = registry.manifest(version) if version else None
        except ModelIntegrityError as exc:
            log.warning(
                "latest model unreadable; scheduling as if there were none", extra={"error": str(exc)}
            )
            manifest = None
        if manifest is not None:
            schedule.last_cycle_at = manifest.created_at
            trained_seq = manifest.data.get(LOG_SEQ_KEY)
            # A position beyond our log means the log was rebuilt: count everything in it as new.
            if isinstance(trained_seq, int) and trained_seq <= log_seq:
                schedule.last_cycle_seq = trained_seq
        return schedule

    def new_events(self, log_seq: int) -> int:
        """Events that arrived since the last cycle."""
        return log_seq - self.last_cycle_seq

    def due(self, now: float, log_seq: int) -> bool:
        """True when a cycle should start now."""
        new = self.new_events(log_seq)
        enough_events = new >= self.min_new_events
        interval_passed = now - self.last_cycle_at >= self.interval_seconds and new > 0
        if self.trigger == "all":
            return enough_events and interval_passed
        return enough_events or interval_passed

    def mark(self, now: float, log_seq: int) -> None:
        """Record a cycle (successful or not) so the next one waits for time and data again."""
        self.last_cycle_at = now
        self.last_cycle_seq = log_seq


def _run_cycle(
    settings: Settings,
    event_log: EventLog,
    schedule: CycleSchedule,
    stop: threading.Event,
    requests: CycleRequests,
) -> None:
    """One cycle of the continuous trainer, answering ``requests``; failures are logged, never fatal.

    A cycle stopped before it trained leaves its requests pending: the trainer's next run answers them.
    """
    started = time.monotonic()
    try:
        event_log.catch_up(stop=stop)
        if stop.is_set():
            return
        requests.caught_up(event_log.positions())
        result = _train(settings, event_log, requests.on_epoch)
        CYCLES.labels(result.manifest.status).inc()
        HOLDOUT.labels("candidate").set(result.decision.candidate)
        if result.decision.baseline is not None:
            HOLDOUT.labels("baseline").set(result.decision.baseline)
        warning = ""
        if result.promoted:
            try:
                announce(settings, result.manifest)
            except AnnouncementFailed as exc:
                CYCLES.labels("not_announced").inc()
                log.error("model published but not announced", extra={"error": str(exc)})
                warning = f"{exc}; scorers switch to it when they next look at the registry"
        requests.answer(asdict(result.manifest), result.promoted, warning=warning)
    except NotEnoughData as exc:
        CYCLES.labels("skipped").inc()
        log.warning("training skipped", extra={"reason": str(exc)})
        requests.answer(None, error=str(exc))
    except KeyboardInterrupt:
        log.warning("training cycle abandoned (publishing is atomic: no half model is visible)")
        stop.set()
    except Exception as exc:  # a bad cycle must not stop the log from following the stream
        CYCLES.labels("failed").inc()
        log.exception("training cycle failed")
        requests.answer(None, error=f"the training cycle failed: {exc} (the trainer's log has the traceback)")
    CYCLE_SECONDS.set(time.monotonic() - started)
    LOG_EVENTS.set(event_log.count())
    schedule.mark(time.time(), event_log.last_seq())


def _train(settings: Settings, event_log: EventLog, on_epoch: EpochCallback | None = None) -> CycleResult:
    """Train, publish and judge a model on the log's recent window (announcing is the caller's)."""
    events = within_days(event_log.window(settings.train_window_events), settings.train_window_days)
    data_info = describe_window(events, event_log.last_seq())
    if events.empty:
        raise NotEnoughData(
            f"no events to train on: nothing has arrived on {settings.topic_user_features} yet "
            "(is ingest running, and have interactions been published?)"
        )
    from streamrec.trainer.cycle import run_training_cycle  # imports torch: only when a cycle actually runs

    log.info("training cycle started", extra=data_info)
    started = time.monotonic()
    try:
        result = run_training_cycle(events, settings, data_info, on_epoch)
    except ValueError as exc:
        raise NotEnoughData(
            f"too little data to train ({data_info['events']} events, {data_info['users']} users, "
            f"{data_info['items']} items): {exc}"
        ) from exc
    manifest = result.manifest
    log.info(
        "training cycle finished",
        extra={
            "model_version": manifest.version,
            "status": manifest.status,
            "cycle_seconds": round(time.monotonic() - started, 2),
            **data_info,
            **manifest.metrics,
        },
    )
    return result


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop``; a second signal raises KeyboardInterrupt (abandons a cycle)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread; the caller sets `stop` itself
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info(
            "stopping: finishing the current step (signal again to abandon a training cycle)",
            extra={"signal": signal.Signals(signum).name},
        )
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
