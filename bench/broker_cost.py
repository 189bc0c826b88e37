"""What a run left on the broker: record batches and records per topic, read from raw FetchResponses.

The embedded broker's request cost grows with the record batches a partition holds
(``bench/broker.py``), so the number of batches a pipeline writes per event is a cost of its own,
next to its throughput. :func:`count_record_batches` reads every partition of each topic from
offset 0 to its end with plain Fetch requests (aiokafka's protocol classes, no consumer) and counts
the RecordBatches in the responses, not the messages a consumer would hand out.

``python -m bench.broker_cost`` fills a fresh embedded broker and prints the counts of its topics.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streamrec.shared.kafka_config import aiokafka_config
from streamrec.shared.settings import Settings

# One partition per request: Tansu answers a fetch over several partitions only once the max wait
# is over, so a single-partition fetch with a short wait is the fast one.
FETCH_WAIT_MS = 50
FETCH_MAX_BYTES = 8 * 1024 * 1024
READ_UNCOMMITTED = 0  # isolation level: every batch, those of aborted transactions too
EMPTY_ANSWERS_TOLERATED = 20  # in a row, 0.1 s apart


def count_record_batches(settings: Settings, topics: list[str]) -> dict[str, tuple[int, int]]:
    """Per topic, ``(record batches, records)`` over all its partitions, from the beginning to the end.

    Control batches (transaction markers) count as batches but their records do not; a topic
    the broker does not know raises ValueError.
    """
    return asyncio.run(_count(settings, topics))


async def _count(settings: Settings, topics: list[str]) -> dict[str, tuple[int, int]]:
    client = AIOKafkaClient(**aiokafka_config(settings, client_id="streamrec-bench-broker-cost"))
    await client.bootstrap()
    try:
        for topic in topics:
            client.add_topic(topic)
        await client.force_metadata_update()
        counts: dict[str, tuple[int, int]] = {}
        for topic in topics:
            partitions = client.cluster.partitions_for_topic(topic)
            if not partitions:
                raise ValueError(f"topic {topic!r} not found on the broker")
            batches = records = 0
            for partition in sorted(partitions):
                partition_batches, partition_records = await _count_partition(client, topic, partition)
                batches += partition_batches
                records += partition_records
            counts[topic] = (batches, records)
        return counts
    finally:
        await client.close()


async def _count_partition(client: AIOKafkaClient, topic: str, partition: int) -> tuple[int, int]:
    """``(record batches, records)`` of one partition, fetched from offset 0 to the high watermark."""
    leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
    if leader is None or leader < 0:
        raise RuntimeError(f"{topic}[{partition}]: no leader")
    offset, batches, records, empty_answers = 0, 0, 0, 0
    while True:
        request = FetchRequest(
            FETCH_WAIT_MS,
            1,  # min bytes
            FETCH_MAX_BYTES,
            READ_UNCOMMITTED,
            [(topic, [(partition, offset, FETCH_MAX_BYTES)])],
        )
        response = await client.send(leader, request)
        highwater, record_set = _partition_data(response, topic, partition)
        if offset >= highwater:
            return batches, records
        memory_records = MemoryRecords(record_set)
        advanced = offset
        while (batch := memory_records.next_batch()) is not None:
            # A response may begin before ``offset`` (a batch holding it) or end in a cut-off
            # batch (next_batch() then stops): count only batches wholly past what was counted.
            if batch.next_offset <= advanced:
                continue
            batches += 1
            if not batch.is_control_batch:
                records += sum(1 for _ in batch)
            advanced = batch.next_offset
        if advanced == offset:
            # Seen on a partition still being written (ingest's changelog right after a run): the
            # broker answered with no batch below its end. Ask again before calling it an error.
            empty_answers += 1
            if empty_answers > EMPTY_ANSWERS_TOLERATED:
                raise RuntimeError(
                    f"{topic}[{partition}]: no complete batch at offset {offset} below the end {highwater}"
                )
            await asyncio.sleep(0.1)
            continue
        offset, empty_answers = advanced, 0


def _partition_data(response: Any, topic: str, partition: int) -> tuple[int, bytes]:
    """The high watermark and record set bytes of one partition of a FetchResponse (any version)."""
    for response_topic, partitions in response.topics:
        if response_topic != topic:
            continue
        for response_partition, error_code, highwater, *rest in partitions:
            if response_partition == partition:
                if error_code:
                    raise for_code(error_code)(f"fetch of {topic}[{partition}]")
                return highwater, rest[-1] or b""  # the record set is last in every version
    raise RuntimeError(f"fetch response without {topic}[{partition}]")


def main(argv: list[str] | None = None) -> int:
    """Fill a fresh embedded broker with synthetic events and print the batch counts of its topics."""
    parser = argparse.ArgumentParser(prog="python -m bench.broker_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to fill the topic with")
    args = parser.parse_args(argv)

    from bench.ingest import filled_broker, synthetic_events

    with filled_broker(synthetic_events(args.events)) as (settings, _run_dir, sent):
        topic = settings.topic_interactions
        ((batches, records),) = count_record_batches(settings, [topic]).values()
        print(f"{topic}: {batches:,} record batches, {records:,} records (sent {sent:,})")
        if records != sent:
            print("records differ from the events sent", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
