"""Hiding an item: from its catalog message to the moment no read returns it any more (figure 10).

The embedded stack (broker, Redis, ingest, scorer) serves a synthetic stream; every user has a
list. Each trial hides the most popular item with one message on the items topic and times, from
the produce call:

- when the scorer's serving catalog in Redis hides it (items -> ingest -> streamrec.catalog ->
  scorer -> Redis);
- when no read returns it any more: ``RecommendationClient.get`` (a long-lived reader that checks
  the catalog's version every half second) for 20 users whose lists hold it, and the popular fallback.

The item is then made available again (and seen back in the reads) before the next trial.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import orjson
from confluent_kafka import Producer

from bench.harness import Figure, Section, percentile
from bench.stack import publish_events, running_stack, wait_until
from streamrec.api.read_filters import CATALOG_CHECK_SECONDS
from streamrec.client import RecommendationClient
from streamrec.shared.catalog import ServingCatalog
from streamrec.shared.kafka_config import client_config
from streamrec.shared.settings import Settings
from streamrec.synthetic import generate

READERS = 20  # users whose reads must all drop the item
POLL_SECONDS = 0.005
TIMEOUT_SECONDS = 30.0


def _wait(condition, what: str) -> float:
    """Poll ``condition`` every ``POLL_SECONDS`` until true; the time it became true (epoch s): a
    measurement, finer than the stack helpers' waits."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL_SECONDS)
    return time.time()


def _trial(
    settings: Settings, producer: Producer, client: RecommendationClient, users: list[str]
) -> tuple[float, float]:
    """Hide the most popular item; (seconds until Redis's catalog hides it, until no read returns it)."""
    n = settings.top_n
    fallback = client.get("bench-nobody", n=n)
    assert fallback is not None and fallback.items, "no popular list"
    item = fallback.items[0][0]
    readers = [user for user in users if item in dict(client.get(user, n=n).items)][:READERS]  # type: ignore[union-attr]
    store = client._redis  # the reader's own connection: one more GET of the catalog per poll

    def in_redis_catalog() -> bool:
        raw = store.get(client.keys.catalog)
        return raw is not None and not ServingCatalog.decode(raw).available(item, time.time())

    def gone_from_reads() -> bool:
        reads = [client.get(user, n=n) for user in [*readers, "bench-nobody"]]
        return all(item not in dict(recs.items) for recs in reads if recs is not None)

    sent = time.time()
    producer.produce(
        settings.topic_items, key=item.encode(), value=orjson.dumps({"item_id": item, "hidden": True})
    )
    producer.flush(30)
    catalog_at = _wait(in_redis_catalog, "the serving catalog to hide the item")
    read_at = _wait(gone_from_reads, "the reads to drop the item")
    producer.produce(settings.topic_items, key=item.encode(), value=orjson.dumps({"item_id": item}))
    producer.flush(30)
    _wait(lambda: item in dict(client.get("bench-nobody", n=n).items), "the item back")  # type: ignore[union-attr]
    return catalog_at - sent, read_at - sent


def run(quick: bool) -> list[Section]:
    """Figure 10: hide-to-gone latency on the embedded stack."""
    trials = 5 if quick else 40
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_stack(Path(tmp), partitions=2, metrics_port=0, popular_publish_seconds=1.0) as stack,
    ):
        settings = stack.settings
        events = generate(users=300, items=200, clusters=4, events_per_user=(5, 15), seed=7)
        publish_events(settings, events, "bench-catalog")
        users = sorted(map(str, events.user_id.unique()))
        with RecommendationClient(settings=settings) as client:
            wait_until(
                stack,
                lambda: all(client._redis.exists(client.keys.recs(u)) for u in users[-10:]),
                "users' lists",
                TIMEOUT_SECONDS,
            )
            producer = Producer(
                client_config(settings, {"linger.ms": 0, "acks": "all", "log.connection.close": False})
            )
            timings = [_trial(settings, producer, client, users) for _ in range(trials)]
    catalog_s = [t[0] * 1000 for t in timings]
    read_s = [t[1] * 1000 for t in timings]
    figures = [
        Figure("hidden item gone from every read, p50", "ms", [percentile(read_s, 50)]),
        Figure("hidden item gone from every read, p99", "ms", [percentile(read_s, 99)], target="≤ 2,000 ms"),
        Figure("hidden item gone from every read, max", "ms", [max(read_s)]),
        Figure("serving catalog in Redis hides it, p50", "ms", [percentile(catalog_s, 50)]),
        Figure("serving catalog in Redis hides it, p99", "ms", [percentile(catalog_s, 99)]),
    ]
    return [
        Section(
            "Hiding an item (figure 10)",
            "python -m bench --only catalog" + (" --quick" if quick else ""),
            figures,
            description=(
                f"{trials} trials on the embedded stack (ingest, scorer, 300 users with lists). Each hides "
                "the most popular item with one message on the items topic and times, from the produce call, "
                "when the scorer's serving catalog in Redis hides it, and when no read returns it any more "
                f"(`RecommendationClient.get` for {READERS} users whose lists hold it and for the popular "
                f"fallback, polled every {POLL_SECONDS * 1000:.0f} ms, by a reader that checks the catalog's "
                f"version every {CATALOG_CHECK_SECONDS} s). Then the item is made available again."
            ),
        )
    ]
