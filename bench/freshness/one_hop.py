"""The freshness baseline: the same paced producer at the same rate, read back by one consumer with the
stack's fetch wait, on a topic of its own: one produce→consume hop."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.freshness.load import DRAIN_IDLE_SECONDS, new_producer, paced
from bench.freshness.sizes import PARTITIONS, Size
from bench.stack import create_topic
from streamrec.processes import StackError
from streamrec.shared.kafka_config import aiokafka_config
from streamrec.shared.settings import Settings

BASELINE_TOPIC = "bench.one-hop.{run}"  # one per run, read from its start: no earlier run in it


async def one_hop(settings: Settings, size: Size, run: int) -> list[float]:
    """Latencies (ms) of the same producer at the same rate, read back by one consumer."""
    topic = BASELINE_TOPIC.format(run=run)
    create_topic(
        settings, topic, PARTITIONS
    )  # replicated as streamrec's: on three brokers, one replicated hop
    consumer = AIOKafkaConsumer(**aiokafka_config(settings, fetch_max_wait_ms=settings.kafka_fetch_wait_ms))
    await consumer.start()
    producer = new_producer(settings)
    count = round(size.rate * size.baseline_seconds)
    published: list[float] = [0.0] * count
    latencies: list[float] = []
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)

        async def read() -> None:
            while len(latencies) < count:
                batches = await consumer.getmany(timeout_ms=500)
                now = time.time()
                for messages in batches.values():
                    latencies.extend((now - published[int(m.value)]) * 1000 for m in messages)

        reader = asyncio.create_task(read())

        async def send(seq: int) -> None:
            published[seq] = time.time()
            producer.send(topic, str(seq).encode(), key=str(seq % 1000).encode())

        await paced(size.rate, count, send, lambda: f"{len(latencies):,} read back")
        await producer.flush()
        try:
            await asyncio.wait_for(reader, DRAIN_IDLE_SECONDS)
        except TimeoutError:
            raise StackError(f"one-hop baseline: {len(latencies)}/{count} messages read back") from None
        return latencies
    finally:
        await consumer.stop()
