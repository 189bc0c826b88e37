"""The load generator: a paced producer that sends at a steady rate without drifting from its schedule."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer

from bench.freshness.sizes import PRODUCER_LINGER_MS
from bench.harness import PROGRESS_SECONDS, log_progress
from streamrec.shared.kafka_config import aiokafka_config
from streamrec.shared.settings import Settings

DRAIN_IDLE_SECONDS = 15.0  # after publishing, stop waiting once nothing arrived for this long


async def paced(
    rate: float, count: int, send: Callable[[int], Awaitable[object]], status: Callable[[], str]
) -> float:
    """Call ``send(seq)`` for seq 0..count-1 at ``rate`` per second (a late event is sent at once,
    not skipped: the schedule does not drift); returns the rate achieved."""
    loop = asyncio.get_running_loop()
    started = next_progress = loop.time()
    for seq in range(count):
        delay = started + seq / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(seq)
        if loop.time() >= next_progress:
            next_progress += PROGRESS_SECONDS
            log_progress(f"  {seq:,}/{count:,} sent; {status()}")
    return count / max(1e-9, loop.time() - started)


def new_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer both measurements use: the Publisher's linger, every replica acknowledging."""
    return AIOKafkaProducer(**aiokafka_config(settings, linger_ms=PRODUCER_LINGER_MS, acks="all"))
