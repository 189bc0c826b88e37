"""The Quix Streams baseline of figure 1, run as a child process under ``.venv-quix``'s Python.

``bench/ingest_baselines.py`` (``quix_rate``) starts it; it reads a pre-filled input topic, does
ingest's per-user work in Quix state and writes one features message per event to an output topic,
stops after ``--expected`` input messages and prints one JSON result line (its own rate, from the
first processed message to the last) to stdout.

It runs in an environment of its own (``bench/quix-requirements.txt``: Quix Streams pins
confluent-kafka and pydantic below streamrec's), so it imports nothing but the standard library,
quixstreams and orjson (not streamrec, nor the rest of ``bench``) and gets everything from its
command line. Bootstrap servers are used as given, over PLAINTEXT: no SASL or TLS, which the
benchmark's embedded broker does not use.

    .venv-quix/bin/python -I bench/quix_worker.py --bootstrap 127.0.0.1:9092 --topic interactions \\
        --output features --expected 100000 --state-dir /tmp/quix-state
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # quixstreams is installed in .venv-quix only, not where ruff or the tests run
    from quixstreams import State
    from quixstreams.models import Topic

# What Quix takes as the input topic's retention when the broker reports none (Tansu): unlimited,
# so that the changelogs Quix derives from it never expire either.
UNLIMITED_RETENTION_MS = "-1"
RESULT_KEY = "bench_result"  # the parent finds the result line by it (bench/ingest_baselines.py)


def _supply_retention(topic: Topic) -> None:
    """Give ``topic``'s broker config a ``retention.ms`` if the broker reported none.

    Quix derives its changelog topics' config from the input topics' configs as DescribeConfigs
    returned them (``TopicManager.derive_topic_config``), and fails with a KeyError without
    ``retention.ms``; Tansu reports no config at all for a topic created without one.
    """
    from quixstreams.models import TopicConfig

    config = topic.broker_config
    if "retention.ms" not in config.extra_config:
        topic.broker_config = TopicConfig(  # the setter stores a copy: replace, do not mutate
            num_partitions=config.num_partitions,
            replication_factor=config.replication_factor,
            extra_config={**config.extra_config, "retention.ms": UNLIMITED_RETENTION_MS},
        )


def fold_event(
    event: dict[str, Any], state: State, history_len: int, dedup_window: int
) -> dict[str, Any] | None:
    """Ingest's per-user work for one event: the features to emit, or None for a repeated event id.

    The user's last ``history_len`` ``[item_id, timestamp, event_type]``, last ``dedup_window``
    event ids and event count, in one state value per user.
    """
    user = state.get("user") or {"history": [], "event_ids": [], "event_count": 0}
    event_id = event.get("event_id")
    if event_id is not None:
        if event_id in user["event_ids"]:
            return None
        user["event_ids"].append(event_id)
        del user["event_ids"][:-dedup_window]
    user["history"].append([event["item_id"], event["timestamp"], event["event_type"]])
    del user["history"][:-history_len]
    user["event_count"] += 1
    state.set("user", user)
    return {
        "user_id": event["user_id"],
        "history": [entry[0] for entry in user["history"]],
        "event_count": user["event_count"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the app until ``args.expected`` input messages were processed; return the result line."""
    from quixstreams import Application

    processed, first, last = 0, 0.0, 0.0

    def on_processed(_topic: str, _partition: int, _offset: int) -> None:
        nonlocal processed, first, last
        processed += 1
        last = time.perf_counter()
        if processed == 1:
            first = last

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",  # a new group each run: read from the start
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        consumer_extra_config={
            # Tansu answers a fetch over several partitions only once the fetch max wait is over.
            "fetch.wait.max.ms": args.fetch_wait_ms,
            # Tansu holds a first join for half the session timeout (librdkafka's default: 45 s).
            "session.timeout.ms": args.session_timeout_ms,
            "heartbeat.interval.ms": min(3000, args.session_timeout_ms // 3),
        },
        on_message_processed=on_processed,
        loglevel="WARNING",
        # commit_interval stays Quix's 5 s: state goes to RocksDB and the changelog once per
        # checkpoint (the last value of each changed user), so a run of a few seconds holds about
        # one checkpoint; 1 s checkpoints cost ~15% on 100k events.
    )
    source = app.topic(args.topic, key_deserializer="bytes", value_deserializer="json")
    _supply_retention(source)  # before the state's changelog config is derived from it
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="json")
    sdf = app.dataframe(source)
    fold = functools.partial(fold_event, history_len=args.history_len, dedup_window=args.dedup_window)
    sdf = sdf.apply(fold, stateful=True)
    sdf = sdf.filter(lambda features: features is not None)
    sdf.to_topic(sink)  # keeps the message key (user_id): the input is keyed by it, no re-key hop
    app.run(count=args.expected, collect=False)
    if processed < 2 or last <= first:
        raise RuntimeError(f"processed {processed} messages: nothing to time")
    return {
        RESULT_KEY: "quix",
        "events": processed,
        "seconds": last - first,
        "rate": (processed - 1) / (last - first),  # the first message starts the clock
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the app, print its one JSON result line."""
    parser = argparse.ArgumentParser(prog="quix_worker.py", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="bootstrap servers, host:port[,…] (PLAINTEXT)")
    parser.add_argument("--topic", required=True, help="the pre-filled input topic (JSON values)")
    parser.add_argument("--output", required=True, help="the features topic to write (must exist)")
    parser.add_argument("--expected", type=int, required=True, help="input messages to process")
    parser.add_argument("--state-dir", type=Path, required=True, help="Quix's RocksDB state folder")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000, help="consumer session timeout")
    parser.add_argument("--fetch-wait-ms", type=int, default=50, help="consumer fetch.wait.max.ms")
    parser.add_argument("--history-len", type=int, default=200, help="items kept per user")
    parser.add_argument("--dedup-window", type=int, default=1_000, help="event ids remembered per user")
    args = parser.parse_args(argv)
    print(orjson.dumps(run(args)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
