"""Bad input through the real ingest worker: a generated corpus of good, broken and hostile events.

Hypothesis generates the corpus (deterministically: ``derandomize=True``), the project's own pure
validator ``parse_event`` is the oracle for each payload, and the corpus goes as raw bytes through
the session stack's broker and ingest worker. Then, from what came out of Kafka:

- the worker is still the same live process and a sentinel event sent last got through;
- every invalid payload is in the dead-letter topic exactly once, with the oracle's reason;
- every valid payload is in the user features exactly once, in order, with the right running
  ``event_count``; a repeated event_id within the user's dedup window is dropped, one outside it
  is counted again (``docs/reliability.md``, "Bad input").

All payloads go to partition 0 of the input topic, so ingest sees them in the order they were
generated and the oracle can replay the dedup window in that same order.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from streamrec.shared.events import Interaction, Rejection, parse_event
from streamrec.shared.kafka_topics import INGEST_REKEYED_TOPIC
from streamrec.shared.messages import FeatureBatch, decode_feature_batch
from streamrec.shared.settings import Settings
from streamrec.shared.topic_admin import existing_topics

from support import LiveStack, only_the_strategies, wait_for

pytestmark = pytest.mark.integration

# Names no other test uses: other tests assert on counts of their own users.
PREFIX = "fuzz-bad-input"
STRING_USERS = [f"{PREFIX}-u{n}" for n in range(40)]
INT_USERS = [7_310_000_000 + n for n in range(10)]  # integer ids far from any dataset's
WINDOW_USER = f"{PREFIX}-window"
SENTINEL_USER = f"{PREFIX}-sentinel"
EVENT_ID_POOL = [f"{PREFIX}-e{n}" for n in range(60)]  # small, so duplicates are frequent

EXAMPLES = 500
EVENTS_PER_EXAMPLE = 20  # 10,000 generated events
NOW = 1_700_000_000.0  # generated "valid" timestamps stay well below the real clock
FAR_FUTURE = 4_000_000_000.0  # 2096: far beyond any accepted clock skew


# --- the corpus ------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
wrong_types = (
    st.none() | st.booleans() | st.floats() | st.lists(st.integers(), max_size=3) | st.just({"a": 1})
)

# Each field: (strategy of valid values, strategy of invalid or suspicious ones).
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "user_id": (
        st.one_of(
            st.sampled_from(STRING_USERS),
            st.sampled_from(INT_USERS),
            st.sampled_from(STRING_USERS).map(lambda u: f"  {u}\t"),  # normalised: the same user
            st.sampled_from(INT_USERS).map(str),  # "42" is the same user as 42
        ),
        st.sampled_from(["", "   ", "x" * 300, f"{PREFIX}-\x00nul", f"{PREFIX}\nline", "u" * 10_000])
        | wrong_types,
    ),
    "item_id": (
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(lambda t: t.strip())
        | st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.sampled_from(["", " ", "i" * 257, "\r", "ok\x00", "🙂" * 300]) | wrong_types,
    ),
    "event_type": (
        st.sampled_from(["view", "click", "add_to_cart", "purchase", "rating", "like", "x", "a" * 32]),
        st.sampled_from(["View", "view!", "", "a" * 33, "view\n", "_x", "1view", "ünï"])
        | st.text(max_size=10)
        | wrong_types,
    ),
    "timestamp": (
        st.floats(min_value=0, max_value=NOW)
        | st.integers(min_value=0, max_value=int(NOW))
        | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
        | st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00+05:30", "1970-01-01T00:00:00Z"]),
        st.floats(min_value=FAR_FUTURE, max_value=1e300)
        | st.floats(max_value=-1e-6)
        | st.integers(max_value=-1)
        | st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**30, -(10**30)])
        | st.datetimes().map(lambda d: d.isoformat())  # no zone: refused
        | st.sampled_from(["2999-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "yesterday", "", "1e3"])
        | st.sampled_from(["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+14:00"])
        | st.booleans()
        | st.lists(st.integers(), max_size=2),
    ),
    "value": (
        st.floats(allow_nan=False, allow_infinity=False)
        | st.integers(min_value=-(10**6), max_value=10**6)
        | st.none(),
        st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400, "1", "x"]) | st.booleans(),
    ),
    "event_id": (
        st.sampled_from(EVENT_ID_POOL) | st.text(max_size=20) | st.sampled_from(["", "e" * 256]) | st.none(),
        st.sampled_from(["e" * 257, 7, 1.5, True]) | st.lists(st.integers(), max_size=1),
    ),
}
REQUIRED = ("user_id", "item_id", "event_type")


@st.composite
def structured_events(draw: st.DrawFn) -> dict[str, Any]:
    """An event object: each field valid (mostly), invalid, or missing; sometimes extra fields.

    About half of these are valid events, the rest break one field or more.
    """
    event: dict[str, Any] = {}
    for name, (valid, invalid) in FIELDS.items():
        roll = draw(st.integers(0, 39))
        if roll == 0 or (name not in REQUIRED and roll < 20):
            continue  # missing
        event[name] = draw(invalid if roll in (1, 2) else valid)
    if draw(st.integers(0, 4)) == 0:
        extra = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3))
        event.update({k: v for k, v in extra.items() if k not in FIELDS})
    return event


def encode(event: Any) -> bytes:
    """JSON the way a careless producer writes it: NaN/Infinity literals, any float, huge ints."""
    return json.dumps(event, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _not_utf8(pair: tuple[bytes, int]) -> bytes:
    raw, at = pair
    at = at % (len(raw) + 1)
    return raw[:at] + b"\xff\xc3" + raw[at:]


def _oversized(pair: tuple[int, int]) -> bytes:
    size, kind = pair
    if kind == 0:  # a valid-looking event with a huge field
        event = {"user_id": STRING_USERS[0], "item_id": "big", "event_type": "view", "pad": "p" * size}
        return orjson.dumps(event)
    return bytes([kind]) * size  # a blob of one byte value


# Weighted mix: mostly structured events (valid, wrong types, missing/extra fields, bad times…),
# some of every other kind of garbage; oversized payloads are rare because each is big.
payloads = st.integers(0, 99).flatmap(
    lambda k: (
        structured_events().map(encode)
        if k < 70
        else json_values.filter(lambda v: not (isinstance(v, dict) and "user_id" in v)).map(encode)
        if k < 78
        else st.binary(max_size=200)
        if k < 86
        else st.tuples(structured_events().map(encode), st.integers(0, 10_000)).map(_not_utf8)
        if k < 93
        else st.sampled_from([b"", b" ", b"null", b"{}", b"[]", b'"x"', b"{", b"\x00" * 8])
        if k < 99
        else st.tuples(st.integers(65_537, 200_000), st.integers(0, 255)).map(_oversized)
    )
)


def generate_corpus(sink: Callable[[bytes], None]) -> list[bytes]:
    """The generated payloads, the same on every run; each is handed to ``sink`` as soon as it
    is generated (so that ingest works while the rest is generated)."""
    corpus: list[bytes] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # no shrinking: nothing fails here, we only collect
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(payloads, min_size=EVENTS_PER_EXAMPLE, max_size=EVENTS_PER_EXAMPLE))
    def collect(batch: list[bytes]) -> None:
        corpus.extend(batch)
        for raw in batch:
            sink(raw)

    with only_the_strategies():
        collect()
    return corpus


def window_sequence(dedup_window: int) -> list[bytes]:
    """One user with ``dedup_window + 1`` distinct event ids, then the first id again (outside the
    window: counted again) and the last one again (inside it: dropped)."""
    ids = [f"{PREFIX}-w{n}" for n in range(dedup_window + 1)]
    events = [
        {
            "user_id": WINDOW_USER,
            "item_id": f"w{n % 50}",
            "event_type": "view",
            "timestamp": 1e9 + n,
            "event_id": i,
        }
        for n, i in enumerate(ids)
    ]
    again = [ids[0], ids[-1]]
    events += [
        {"user_id": WINDOW_USER, "item_id": "again", "event_type": "click", "event_id": i} for i in again
    ]
    return [orjson.dumps(event) for event in events]


# --- the oracle ------------------------------------------------------------------------------


@dataclass
class Expected:
    """What ingest must do with the corpus, from ``parse_event`` and the documented dedup rule."""

    rejected: dict[bytes, str] = field(default_factory=dict)  # message key -> reason
    # per user, in order: the event and whether its timestamp was given (else: arrival time)
    accepted: dict[str, list[tuple[Interaction, bool]]] = field(default_factory=lambda: defaultdict(list))
    duplicates: int = 0

    @property
    def accepted_count(self) -> int:
        return sum(len(events) for events in self.accepted.values())


def expected_outcome(messages: list[tuple[bytes, bytes | None]], live: Settings) -> Expected:
    """Run the pure validator and a plain re-implementation of the per-user dedup window."""
    expected = Expected()
    windows: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=live.dedup_window))
    for key, raw in messages:
        result = parse_event(
            raw if raw is not None else b"",  # a tombstone is an empty, invalid event
            now=time.time(),
            max_bytes=live.max_event_bytes,
            max_future_seconds=live.max_future_seconds,
        )
        if isinstance(result, Rejection):
            expected.rejected[key] = result.reason.value
            continue
        window = windows[result.user_id]
        if result.event_id is not None and result.event_id in window:
            expected.duplicates += 1
            continue
        if result.event_id is not None and live.dedup_window > 0:
            window.append(result.event_id)
        given = orjson.loads(raw or b"").get("timestamp") is not None
        expected.accepted[result.user_id].append((result, given))
    return expected


def comparable(event: Interaction, with_time: bool) -> tuple[Any, ...]:
    """The fields ingest must pass through unchanged (arrival-time timestamps excluded)."""
    return (
        event.item_id,
        event.event_type,
        event.value,
        event.event_id,
        event.timestamp if with_time else None,
    )


# --- reading Kafka -------------------------------------------------------------------------------


def read_topic(consumer: Consumer, into: list[Any], keep: Any, timeout: float = 0.5) -> None:
    """Append ``keep(message)`` for every message read so far (None results are skipped)."""
    while batch := consumer.consume(5_000, timeout):
        for message in batch:
            if message.error() is None and (kept := keep(message)) is not None:
                into.append(kept)


def consumer_from_start(live: Settings, topic: str) -> Consumer:
    """A consumer of every partition of ``topic`` from its first message."""
    consumer = Consumer(
        {
            "bootstrap.servers": live.kafka_bootstrap,
            "group.id": f"{PREFIX}-{topic}-{time.time_ns()}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    return consumer


# --- the test ------------------------------------------------------------------------------------


def test_ingest_survives_a_generated_corpus_and_accounts_for_every_event(live_stack: LiveStack) -> None:
    live = live_stack.settings
    ingest = live_stack.stack.children["ingest"]
    pid = ingest.pid
    started = time.monotonic()

    # Message keys name each payload, so its dead letter (which keeps the key) can be found.
    with InputProducer(live) as producer:
        corpus = generate_corpus(producer.send)
        assert len(corpus) >= 10_000
        for raw in [*window_sequence(live.dedup_window), None]:  # None: a tombstone
            producer.send(raw)
        sentinel = {"user_id": SENTINEL_USER, "item_id": "last", "event_type": "view"}
        producer.send(orjson.dumps(sentinel))  # last: once it is through, nothing stalled
    published_at = time.monotonic()
    expected = expected_outcome(producer.sent, live)

    users = set(expected.accepted)
    features: list[FeatureBatch] = []
    letters: list[tuple[bytes, dict[str, Any]]] = []
    features_consumer = consumer_from_start(live, live.topic_user_features)
    letters_consumer = consumer_from_start(live, live.topic_dlq)

    def keep_features(message: Any) -> FeatureBatch | None:
        batch = decode_feature_batch(message.value())
        return batch if any(user.user_id in users for user in batch.users) else None

    def accepted_events() -> list[Interaction]:
        return [event for batch in features for event in batch.events if event.user_id in users]

    def keep_letter(message: Any) -> tuple[bytes, dict[str, Any]] | None:
        key = message.key()
        return (key, orjson.loads(message.value())) if key and key.startswith(PREFIX.encode()) else None

    def read_both() -> None:
        read_topic(features_consumer, features, keep_features)
        read_topic(letters_consumer, letters, keep_letter)

    def everything_arrived() -> bool:
        read_both()
        return len(accepted_events()) >= expected.accepted_count and len(letters) >= len(expected.rejected)

    try:
        wait_for(everything_arrived, 150, "ingest to account for every generated event", interval=0.5)
        time.sleep(2)  # an event sent twice would arrive by now
        read_both()
    finally:
        features_consumer.close()
        letters_consumer.close()

    # The worker never crashed or stalled: same process, alive, and the last event got through.
    assert ingest.alive() and ingest.pid == pid, ingest.log_tail()
    assert any(event.user_id == SENTINEL_USER for event in accepted_events())

    # Every invalid event is dead-lettered exactly once, with the oracle's machine-readable reason.
    letter_counts = Counter(key for key, _ in letters)
    assert [key for key, count in letter_counts.items() if count > 1] == [], "dead-lettered twice"
    reasons = {key: letter["reason"] for key, letter in letters}
    assert sorted(set(expected.rejected) - set(reasons)) == [], "invalid events missing from the DLQ"
    assert sorted(set(reasons) - set(expected.rejected)) == [], "valid events in the DLQ"
    wrong = {
        key: (reasons[key], reason) for key, reason in expected.rejected.items() if reasons[key] != reason
    }
    assert wrong == {}, "dead letters with another reason than the validator's (got, expected)"
    assert all(letter["detail"] and letter["source"]["partition"] == 0 for _, letter in letters)

    # Every valid event is in the features exactly once, in order, and each user's last snapshot
    # counts them all.
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for event in accepted_events():
        by_user[event.user_id].append(event)
    final_count = {user.user_id: user.event_count for batch in features for user in batch.users}
    assert set(by_user) == set(expected.accepted)
    for user, accepted in expected.accepted.items():
        got = [
            comparable(event, with_time=given)
            for event, (_, given) in zip(by_user[user], accepted, strict=True)
        ]
        assert len(by_user[user]) == len(accepted), user
        assert got == [comparable(event, with_time=given) for event, given in accepted], user
        assert final_count[user] == len(accepted), user
    # The window user's first id came back after dedup_window other ids (counted again), its last
    # id right after itself (dropped): dedup_window + 1 distinct ids + 1.
    assert final_count[WINDOW_USER] == live.dedup_window + 2

    valid = expected.accepted_count + expected.duplicates
    print(
        f"\nbad input: {len(producer.sent)} events ({len(corpus)} generated), {len(expected.rejected)} invalid "
        f"{dict(Counter(expected.rejected.values()))}, {valid} valid, {expected.duplicates} duplicates "
        f"dropped, {expected.accepted_count} accepted, lost 0, counted twice 0; generated and "
        f"sent in {published_at - started:.0f} s, then drained in {time.monotonic() - published_at:.0f} s"
    )


class InputProducer:
    """Sends raw payloads, in order, to partition 0 of the input topic, keyed ``PREFIX:n``."""

    def __init__(self, live: Settings) -> None:
        self.topic = live.topic_interactions
        self.producer = Producer(
            {"bootstrap.servers": live.kafka_bootstrap, "linger.ms": 20, "message.max.bytes": 1_000_000}
        )
        self.sent: list[tuple[bytes, bytes | None]] = []
        self.failures: list[str] = []

    def send(self, raw: bytes | None) -> None:
        """Queue one payload (None: a tombstone, a message without a value)."""
        key = f"{PREFIX}:{len(self.sent)}".encode()
        while True:
            try:
                # One partition: ingest sees the generated order, which the oracle replays.
                self.producer.produce(
                    self.topic, key=key, value=raw, partition=0, on_delivery=self._delivered
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self.producer.poll(0)
        self.sent.append((key, raw))

    def _delivered(self, err: Any, _message: Any) -> None:
        if err is not None:
            self.failures.append(str(err))

    def __enter__(self) -> InputProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.producer.flush(60) == 0 and not self.failures, self.failures[:3]


def test_an_unreadable_record_on_the_rekey_topic_is_dead_lettered_and_ingest_goes_on(
    live_stack: LiveStack,
) -> None:
    # Only ingest writes streamrec-ingest-rekeyed; a record it cannot read (a bug, a foreign
    # producer) must not stop the agent that folds the partition's re-keyed events.
    live = live_stack.settings
    ingest = live_stack.stack.children["ingest"]
    pid = ingest.pid
    rekeyed_topic = INGEST_REKEYED_TOPIC
    user = f"{PREFIX}-after-rekeyed"
    keys = [f"{PREFIX}-rekeyed:{n}".encode() for n in range(3)]
    # Faust creates the topic when ingest starts; a producer that got there first would create it
    # with the broker's default partition count, which ingest refuses.
    wait_for(
        lambda: existing_topics(live).get(rekeyed_topic) == live.partitions,
        60,
        f"ingest to create {rekeyed_topic}",
    )
    producer = Producer({"bootstrap.servers": live.kafka_bootstrap})
    for key, value in zip(keys, [b"not json", b'{"user_id": "no item"}', None], strict=True):
        producer.produce(rekeyed_topic, key=key, value=value, partition=0)
    # Unkeyed, so it takes the re-key hop too: it gets through only if that agent still runs.
    producer.produce(
        live.topic_interactions, value=orjson.dumps({"user_id": user, "item_id": "i", "event_type": "view"})
    )
    assert producer.flush(10) == 0

    letters: list[dict[str, Any]] = []
    users: list[str] = []
    letters_consumer = consumer_from_start(live, live.topic_dlq)
    features_consumer = consumer_from_start(live, live.topic_user_features)

    def keep_letter(message: Any) -> dict[str, Any] | None:
        return orjson.loads(message.value()) if message.key() in keys else None

    def keep_user(message: Any) -> str | None:
        batch = decode_feature_batch(message.value())
        return user if any(snapshot.user_id == user for snapshot in batch.users) else None

    def through() -> bool:
        read_topic(letters_consumer, letters, keep_letter)
        read_topic(features_consumer, users, keep_user)
        return len(letters) >= len(keys) and bool(users)

    try:
        wait_for(through, 60, "the unreadable re-keyed records dead-lettered and the next event through")
    finally:
        letters_consumer.close()
        features_consumer.close()
    assert ingest.alive() and ingest.pid == pid, ingest.log_tail()
    assert [letter["reason"] for letter in letters] == ["unexpected_error"] * len(keys)

    # The same for the popularity deltas ingest sends itself: skipped with a log line, no crash.
    producer.produce(live.topic_item_events, value=b'{"items": [["item-without-score"]]}', partition=0)
    assert producer.flush(10) == 0
    wait_for(
        lambda: "unreadable item-events message" in ingest.log_path.read_text(errors="replace"),
        60,
        "ingest to skip the unreadable popularity delta",
    )
    time.sleep(1)  # a crash would follow the log line at once
    assert ingest.alive() and ingest.pid == pid, ingest.log_tail()
    assert all(letter["source"]["topic"] == rekeyed_topic for letter in letters)
    assert all("re-keyed" in letter["detail"] for letter in letters)
