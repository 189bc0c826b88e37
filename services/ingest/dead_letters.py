"""Validation of input records, and the dead letters of those that fail it.

An input record is an event only if ``shared/events.py`` accepts it (:func:`validate_event`);
otherwise it is parked, never dropped: a :class:`~streamrec.shared.messages.DeadLetter` with
the reason, the detail and the start of the original payload goes to ``interactions.dlq``
(:class:`DeadLetters`), keyed as the original was. Catalog messages are validated by
``item_catalog.py`` and dead-lettered in the same form to ``items.dlq``.
"""

from __future__ import annotations

import time

import faust

from streamrec.ingest.metrics import EVENTS_INVALID, INVALID_EVENTS, IngestCounters
from streamrec.shared.events import Interaction, Rejection, parse_event
from streamrec.shared.logs import get_logger
from streamrec.shared.messages import DeadLetter
from streamrec.shared.settings import Settings

log = get_logger(__name__)

# Dead letters keep at most this much of the original payload, so that even a huge message
# (escaped as JSON) fits in one Kafka record.
DEAD_LETTER_PAYLOAD_BYTES = 128 * 1024


def validate_event(record: faust.types.Message, settings: Settings) -> Interaction | tuple[str, str]:
    """The record's event, or the reason and detail of its dead letter."""
    raw: bytes = record.value if record.value is not None else b""  # tombstones are invalid too
    try:
        result = parse_event(
            raw, max_bytes=settings.max_event_bytes, max_future_seconds=settings.max_future_seconds
        )
    except Exception as exc:  # a bug must not stop the stream: park the event, keep going
        log.exception("event could not be validated", extra={"offset": record.offset})
        return "unexpected_error", repr(exc)
    if isinstance(result, Rejection):
        return str(result.reason), result.detail
    return result


def dead_letter(record: faust.types.Message, raw: bytes, reason: str, detail: str) -> bytes:
    """The dead letter of ``record`` (its payload ``raw``), refused for ``reason``."""
    return DeadLetter(
        reason=reason,
        detail=detail,
        payload=raw[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        rejected_at=time.time(),
    ).to_json()


class DeadLetters:
    """Sends refused input records to the events' dead-letter topic, counted by reason."""

    def __init__(self, topic: faust.TopicT, counters: IngestCounters) -> None:
        self.topic = topic
        self.counters = counters

    async def send(self, record: faust.types.Message, raw: bytes, reason: str, detail: str) -> None:
        """Park ``record`` (payload ``raw``) with its reason and detail."""
        self.counters.rejected[reason] += 1
        EVENTS_INVALID.inc()
        INVALID_EVENTS.labels(reason).inc()
        await self.topic.send(key=record.key, value=dead_letter(record, raw, reason, detail))
