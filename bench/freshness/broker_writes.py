"""What the pipeline writes to the broker during a run (figure 8): record batches and records per topic."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka.admin import AdminClient

from bench.broker_cost import count_record_batches
from streamrec.shared.kafka_config import client_config
from streamrec.shared.settings import Settings


def record_batches_written(settings: Settings) -> dict[str, tuple[int, int]]:
    """(record batches, records) of every topic but the benchmark's own, from their beginnings."""
    admin = AdminClient(client_config(settings, {"log_level": 4}))
    # Not the broker's internal topics either (Apache Kafka lists __consumer_offsets; the embedded
    # broker does not): the figures compare what streamrec's services write on either broker.
    topics = [name for name in admin.list_topics(timeout=30).topics if not name.startswith(("bench.", "__"))]
    del admin
    return count_record_batches(settings, topics)


def written_between(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], keep: Callable[[str], bool]
) -> tuple[int, int]:
    """Batches and records added between two counts, summed over the topics ``keep`` selects."""
    batches = records = 0
    for topic, (after_batches, after_records) in after.items():
        if keep(topic):
            before_batches, before_records = before.get(topic, (0, 0))
            batches += after_batches - before_batches
            records += after_records - before_records
    return batches, records
