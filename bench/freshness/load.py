"""The load generator: a paced producer that sends at a steady rate without drifting from its schedule.

The producer is the client of streamrec's Publisher (confluent-kafka, librdkafka in C) with its
linger: a realistic client, and a light one (aiokafka's, which the benchmark used before, does its
work per message in Python, in this process, on the cores the measured services share).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from confluent_kafka import KafkaException, Producer

from bench.freshness.sizes import PRODUCER_LINGER_MS
from bench.harness import PROGRESS_SECONDS, log_progress
from streamrec.publisher import producer_config
from streamrec.shared.settings import Settings

FLUSH_SECONDS = 60.0

DRAIN_IDLE_SECONDS = 15.0  # after publishing, stop waiting once nothing arrived for this long
# Events due within this long are sent at once: one wake-up of the event loop per few events, not
# one per event (2,500 a second at the capacity steps; each takes CPU the measured services share).
# Each event's latency is timed from its own send, so sending it up to this much early changes none.
SEND_AHEAD_SECONDS = 0.002


async def paced(
    rate: float, count: int, send: Callable[[int], Awaitable[object]], status: Callable[[], str]
) -> float:
    """Call ``send(seq)`` for seq 0..count-1 at ``rate`` per second (a late event is sent at once,
    not skipped: the schedule does not drift; one due within ``SEND_AHEAD_SECONDS`` too); returns
    the rate achieved."""
    loop = asyncio.get_running_loop()
    started = next_progress = loop.time()
    for seq in range(count):
        delay = started + seq / rate - loop.time()
        if delay > SEND_AHEAD_SECONDS:
            await asyncio.sleep(delay)
        await send(seq)
        if loop.time() >= next_progress:
            next_progress += PROGRESS_SECONDS
            log_progress(f"  {seq:,}/{count:,} sent; {status()}")
    return count / max(1e-9, loop.time() - started)


class PacedProducer:
    """The producer both measurements use: the Publisher's client and linger, every replica
    acknowledging; ``send`` hands a message to librdkafka and returns (no await on the broker)."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(producer_config(settings, PRODUCER_LINGER_MS))
        self._failures: list[str] = []

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self._failures.append(str(error))

    def send(self, topic: str, value: bytes, key: bytes) -> None:
        """Queue one message (served by librdkafka's thread); raises if an earlier one failed."""
        if self._failures:
            raise KafkaException(f"the benchmark's producer failed: {self._failures[0]}")
        self._producer.produce(topic, value, key, on_delivery=self._delivered)
        self._producer.poll(0)  # delivery callbacks, without waiting

    async def flush(self) -> None:
        """Wait until the broker acknowledged everything sent (off the event loop)."""
        left = await asyncio.to_thread(self._producer.flush, FLUSH_SECONDS)
        if left or self._failures:
            raise KafkaException(f"the benchmark's producer: {left} unsent, failures {self._failures[:1]}")


def new_producer(settings: Settings) -> PacedProducer:
    """The producer both measurements use (:class:`PacedProducer`)."""
    return PacedProducer(settings)
