"""The embedded broker's limits: what one request costs as a partition accumulates record batches.

Context for the long benchmarks (figure 6 above all), not a figure of streamrec's own: a long
replay on the embedded broker (Tansu, memory storage) slows down as the topics fill, and this
shows where. For each size K, a fresh embedded broker holds two one-partition topics with K
messages each: ``batched`` was produced with a long linger (few large record batches, the
baseline), ``one-per-batch`` with a flush after every message (K batches, which is what a
stream of small sends with a short linger produces). Each run times, with a new consumer each
time (so no long-poll fetch delays the request on a shared connection):

- ListOffsets: the partition's end offset (``get_watermark_offsets``);
- fetch of the last message: assign at offset K-1 and consume one message.

A request with no answer within ``TIMEOUT_S`` counts as ``TIMEOUT_S``. Messages are 100 bytes.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.harness import RUNS, Figure, Section, timed
from streamrec.embedded import start_broker

SIZES = (1_000, 4_000, 16_000)
QUICK_SIZES = (200,)
TIMEOUT_S = 30.0
PAYLOAD = b"x" * 100
TOPICS = {"batched": {"linger.ms": 200}, "one-per-batch": {"linger.ms": 0}}


def _create_topics(bootstrap: str) -> None:
    # In a function of its own, so the admin client is gone before the broker stops (else it logs
    # its lost connection).
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1) for topic in TOPICS]).values():
        future.result(TIMEOUT_S)


def _fill(bootstrap: str, topic: str, messages: int, producer_config: dict[str, object]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, **producer_config})
    one_per_batch = producer_config["linger.ms"] == 0
    for _ in range(messages):
        producer.produce(topic, PAYLOAD)
        if one_per_batch:
            producer.flush(TIMEOUT_S)  # the next message goes out as a batch of its own
        else:
            producer.poll(0)
    if producer.flush(TIMEOUT_S * 4) > 0:
        raise RuntimeError(f"the embedded broker did not take {messages:,} messages for {topic}")


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-broker-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )


def _list_offsets_s(bootstrap: str, topic: str) -> float:
    consumer = _consumer(bootstrap)
    try:
        consumer.list_topics(topic, timeout=TIMEOUT_S)  # connect first: time the request, not the handshake
        return timed(lambda: consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT_S))
    except KafkaException:
        return TIMEOUT_S
    finally:
        consumer.close()


def _fetch_last_s(bootstrap: str, topic: str, messages: int) -> float:
    consumer = _consumer(bootstrap)
    try:
        consumer.list_topics(topic, timeout=TIMEOUT_S)
        consumer.assign([TopicPartition(topic, 0, messages - 1)])
        got: list[object] = []
        seconds = timed(lambda: got.extend(consumer.consume(1, TIMEOUT_S)))
        return seconds if got else TIMEOUT_S
    finally:
        consumer.close()


def _measure(size: int, runs: int) -> dict[tuple[str, str], list[float]]:
    """(request, topic) -> seconds per run, on a fresh broker holding both topics of ``size``."""
    with tempfile.TemporaryDirectory() as tmp:
        broker, bootstrap = start_broker(Path(tmp))
        try:
            _create_topics(bootstrap)
            for topic, config in TOPICS.items():
                _fill(bootstrap, topic, size, config)
            results: dict[tuple[str, str], list[float]] = {}
            for topic in TOPICS:
                results[("list_offsets", topic)] = [_list_offsets_s(bootstrap, topic) for _ in range(runs)]
                results[("fetch_last", topic)] = [_fetch_last_s(bootstrap, topic, size) for _ in range(runs)]
            return results
        finally:
            broker.stop()


def run(quick: bool) -> list[Section]:
    """The embedded-broker section: request latency vs record batches in the partition."""
    runs = 1 if quick else RUNS
    figures = []
    for size in QUICK_SIZES if quick else SIZES:
        results = _measure(size, runs)
        for request, label in (("list_offsets", "ListOffsets"), ("fetch_last", "fetch of the last message")):
            figures.append(
                Figure(
                    f"{label}, {size:,} one-message batches",
                    "ms",
                    [s * 1000 for s in results[(request, "one-per-batch")]],
                    f"{size:,} messages in few batches",
                    [s * 1000 for s in results[(request, "batched")]],
                    note=f"{TIMEOUT_S * 1000:,.0f} ms = no answer" if request == "fetch_last" else "",
                )
            )
    return [
        Section(
            "Embedded broker: request cost vs record batches (context)",
            "python -m bench --only broker" + (" --quick" if quick else ""),
            figures,
            description=(
                "A fresh embedded broker (Tansu, memory storage) per size holds one partition of K 100-byte "
                "messages sent one record batch each, and, as the baseline, one of K messages sent in few "
                "large batches. Each request is timed from a new consumer. A request that gets no answer "
                f"within {TIMEOUT_S:.0f} s counts as {TIMEOUT_S:.0f} s. This is why a long replay slows "
                "down on the embedded broker: its internal topics collect many small batches (see the "
                "memory section). It says nothing about Apache Kafka, which indexes offsets."
            ),
        )
    ]
