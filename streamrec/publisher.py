"""Publishing interaction events to Kafka from Python: the ``Publisher``, and streaming files
(``streamrec publish`` for JSONL/CSV, ``streamrec replay`` for MovieLens) through it.

Any Kafka client works just as well: streamrec only needs one JSON event per message on the
``interactions`` topic (see ``streamrec.shared.events``), keyed by user_id.
"""

from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from tqdm import tqdm

from streamrec.shared.catalog import validate_item
from streamrec.shared.datasets import in_time_order, load_interactions
from streamrec.shared.events import Rejection, validate_event
from streamrec.shared.kafka_config import PublishError, client_config
from streamrec.shared.settings import Settings, load_settings
from streamrec.shared.topic_admin import existing_topics


class InvalidEvent(ValueError):
    """An event that ingest would refuse; raised before it is sent."""


def encode_event(event: Mapping[str, Any], *, max_future_seconds: float) -> tuple[bytes, str]:
    """The message value and key of an event, or InvalidEvent if ingest would refuse it.

    An event without an ``event_id`` gets a random one: ingest recognises a message it reads
    again after a crash by that id, so without one a re-delivered event would be counted twice.
    """
    wire = dict(event)
    checked = validate_event(wire, max_future_seconds=max_future_seconds)
    if isinstance(checked, Rejection):
        raise InvalidEvent(f"{checked.reason.value}: {checked.detail}")
    if wire.get("event_id") is None:
        wire["event_id"] = uuid.uuid4().hex
    return orjson.dumps(wire), checked.user_id


def producer_config(settings: Settings, linger_ms: int = 50) -> dict[str, Any]:
    """The Publisher's confluent-kafka producer configuration (also the benchmarks' load producer's)."""
    return client_config(
        settings,
        {
            # A live stream's sends share record batches: the embedded broker's cost grows
            # with them (docs/latency-tuning.md). A bulk publish fills its batches anyway.
            "linger.ms": linger_ms,
            # Kafka's Java client's partitioner (murmur2), which ingest uses for events that
            # arrive without a user key: a user's events then meet on one partition.
            "partitioner": "murmur2_random",
            "acks": "all",
            "enable.idempotence": False,
            "message.timeout.ms": 30_000,
            "log.connection.close": False,  # idle disconnects are normal, not worth a log line
        },
    )


class Publisher:
    """Sends interaction events to the interactions topic, keyed by user_id.

    Events are validated locally first (the same rules as ingest), batched by the Kafka client
    (``linger_ms``: a send waits up to that long for others to share its record batch), and only
    counted as published once the broker acknowledged them (``flush``)::

        with Publisher("localhost:9092") as pub:
            pub.publish(user_id=42, item_id="sku-9", event_type="purchase")
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        topic: str | None = None,
        settings: Settings | None = None,
        linger_ms: int = 50,
        connect_timeout: float = 10.0,
    ) -> None:
        from confluent_kafka import Producer

        settings = settings or load_settings()
        if bootstrap:
            settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        if not settings.kafka_bootstrap:
            raise PublishError("no Kafka to publish to: pass bootstrap or set STREAMREC_KAFKA_BOOTSTRAP")
        self.bootstrap = settings.kafka_bootstrap
        self._settings, self._connect_timeout = settings, connect_timeout
        self.topic = self._existing(topic or settings.topic_interactions)
        self._items_topic: str | None = None  # checked at the first publish_item
        self.max_future_seconds = settings.max_future_seconds
        self._producer = Producer(producer_config(settings, linger_ms))
        self._failures: list[str] = []
        self.sent = 0

    def publish(
        self,
        user_id: str | int,
        item_id: str | int,
        event_type: str = "view",
        *,
        timestamp: float | str | None = None,
        value: float | None = None,
        event_id: str | None = None,
    ) -> None:
        """Validate and send one event (asynchronously; ``flush`` waits for the broker)."""
        event: dict[str, Any] = {"user_id": user_id, "item_id": item_id, "event_type": event_type}
        for name, field in (("timestamp", timestamp), ("value", value), ("event_id", event_id)):
            if field is not None:
                event[name] = field
        self.publish_event(event)

    def publish_event(self, event: Mapping[str, Any]) -> None:
        """Validate and send one event given as a mapping in the wire format."""
        value, key = encode_event(event, max_future_seconds=self.max_future_seconds)
        self.publish_raw(value, key=key)

    def publish_item(self, item: Mapping[str, Any]) -> None:
        """Validate and send one catalog entry (``{"item_id", "hidden", "categories", "expires_at",
        "properties"}``, see shared/catalog.py) to the items topic, keyed by its item id."""
        checked = validate_item(dict(item))
        if isinstance(checked, Rejection):
            raise InvalidEvent(f"{checked.reason.value}: {checked.detail}")
        if self._items_topic is None:
            self._items_topic = self._existing(self._settings.topic_items)
        self.publish_raw(orjson.dumps(dict(item)), key=checked.item_id, topic=self._items_topic)

    def _existing(self, topic: str) -> str:
        # Fail now, in one line, rather than after the delivery timeout.
        if topic not in existing_topics(self._settings, timeout=self._connect_timeout):
            raise PublishError(
                f"topic {topic!r} does not exist on {self.bootstrap}: run `streamrec topics create`"
            )
        return topic

    def publish_raw(
        self, value: bytes | None, key: str | bytes | None = None, topic: str | None = None
    ) -> None:
        """Send bytes as they are, unvalidated (tests use it to send garbage on purpose), to the
        interactions topic or ``topic``."""
        while True:
            try:
                self._producer.produce(
                    topic or self.topic, value=value, key=key, on_delivery=self._on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)
        self.sent += 1

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every event is acknowledged; raise PublishError if any was not."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise PublishError(
                f"{remaining} events not acknowledged by Kafka at {self.bootstrap} after {timeout:.0f}s"
            )
        if self._failures:
            failures, self._failures = self._failures, []
            raise PublishError(f"{len(failures)} events failed: {failures[0]}")

    def close(self) -> None:
        """Flush outstanding events and release the Kafka client."""
        self.flush()
        self._producer = _ClosedProducer()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


class _ClosedProducer:
    """Stands in for the producer after ``close``: any further use is an error."""

    def __getattr__(self, name: str) -> Any:
        raise PublishError("this Publisher is closed")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_event_file(path: Path) -> list[dict[str, Any]]:
    """Read events from JSONL (one object per line) or CSV (header with the event's field names).

    The whole file is validated before anything is sent, so a malformed file publishes nothing.
    Raises InvalidEvent naming the first bad line.
    """
    text = _read_text(path)
    if path.suffix.lower() == ".csv":
        rows: Iterable[tuple[int, dict[str, Any]]] = (
            (number, _csv_row(row)) for number, row in enumerate(csv.DictReader(text.splitlines()), 2)
        )
    else:
        rows = _jsonl_rows(path, text)
    return _validated(path, rows, validate_event, "events")


def read_item_file(path: Path) -> list[dict[str, Any]]:
    """Read catalog entries from JSONL (one object per line), all validated before anything is sent.

    Raises InvalidEvent naming the first bad line.
    """
    return _validated(path, _jsonl_rows(path, _read_text(path)), validate_item, "items")


def _validated(
    path: Path,
    rows: Iterable[tuple[int, dict[str, Any]]],
    validate: Callable[[dict[str, Any]], object],
    what: str,
) -> list[dict[str, Any]]:
    """Every row of a file, each passed by ``validate``; InvalidEvent naming the first bad line."""
    valid = []
    for number, row in rows:
        checked = validate(row)
        if isinstance(checked, Rejection):
            raise InvalidEvent(f"{path}:{number}: {checked.reason.value}: {checked.detail}")
        valid.append(row)
    if not valid:
        raise InvalidEvent(f"{path}: no {what} in the file")
    return valid


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidEvent(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InvalidEvent(f"{path}: not a UTF-8 text file") from None


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(event, dict):
            raise InvalidEvent(f"{path}:{number}: expected a JSON object per line")
        yield number, event


def _csv_row(row: dict[str, str | None]) -> dict[str, Any]:
    event: dict[str, Any] = {
        key.strip(): value for key, value in row.items() if key and value not in (None, "")
    }
    for name in ("timestamp", "value"):
        if name in event:
            try:
                event[name] = float(event[name])
            except ValueError:
                pass  # ISO-8601 timestamp, or let validation report the bad value
    return event


def dataset_events(frame: pd.DataFrame, source: str) -> Iterator[dict[str, Any]]:
    """Events of an interaction frame in timestamp order; event_id = source + original row."""
    ordered = in_time_order(frame)
    for user, item, ts, value, event_type, row in ordered.itertuples(index=False, name=None):
        event: dict[str, Any] = {
            "user_id": user,
            "item_id": item,
            "event_type": event_type,
            "timestamp": ts,
            "event_id": f"{source}:{row}",
        }
        if value == value:  # not NaN
            event["value"] = value
        yield event


def check_dataset_events(frame: pd.DataFrame, path: Path, *, max_future_seconds: float = 86400.0) -> None:
    """Validate every event of an interaction frame before any is sent; raise InvalidEvent naming
    the first bad data row (or saying the file has none).

    Without this a file with one bad row (a negative timestamp, an id over 256 characters, an
    infinite rating) would be half replayed before the publisher refused that row.
    """
    if frame.empty:  # a header alone is not a dataset: "replayed 0 events" would hide the mistake
        raise InvalidEvent(f"{path}: no events in the file")
    for event in dataset_events(frame, path.name):
        checked = validate_event(event, max_future_seconds=max_future_seconds)
        if isinstance(checked, Rejection):
            row = event["event_id"].rsplit(":", 1)[1]
            raise InvalidEvent(f"{path}: data row {row}: {checked.reason.value}: {checked.detail}")


def replay_file(
    publisher: Publisher,
    path: Path,
    *,
    speed: float = 0.0,
    limit: int | None = None,
    progress: bool = True,
) -> int:
    """Publish a MovieLens (or generic CSV) file in timestamp order; returns events sent.

    ``speed`` 0 sends as fast as possible; otherwise dataset time runs ``speed`` times faster than
    wall time (``speed=3600``: one hour of recorded activity per second).
    """
    frame = load_interactions(path)
    if limit is not None:
        frame = in_time_order(frame).head(limit)
    check_dataset_events(frame, path, max_future_seconds=publisher.max_future_seconds)
    return publish_stream(
        publisher, dataset_events(frame, path.name), len(frame), speed=speed, progress=progress
    )


def publish_stream(
    publisher: Publisher,
    events: Iterable[dict[str, Any]],
    total: int | None = None,
    *,
    speed: float = 0.0,
    progress: bool = True,
) -> int:
    """Publish events (already in time order), optionally paced by their timestamps."""
    started = time.monotonic()
    first_ts: float | None = None
    sent = 0
    with tqdm(total=total, unit="ev", disable=not progress, desc="publish") as bar:
        for event in events:
            if speed > 0:
                first_ts = event["timestamp"] if first_ts is None else first_ts
                due = started + (event["timestamp"] - first_ts) / speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            publisher.publish_event(event)
            sent += 1
            if sent % 1000 == 0:
                bar.update(1000)
        bar.update(sent % 1000)
    publisher.flush()
    return sent
