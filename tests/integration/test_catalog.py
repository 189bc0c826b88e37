"""The item catalog end to end: items topic -> ingest -> scorer -> Redis -> every reader's filter;
on the session stack (one redis-server) and on its twin on a Redis Cluster."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer

from streamrec.client import RecommendationClient
from streamrec.shared.cached_list import CachedList

from support import LiveStack, TrainedStack, on_each_redis, wait_for

pytestmark = pytest.mark.integration

trained_stack = on_each_redis("trained_stack")  # each test once on one server, once on a cluster


def publish_items(live_stack, tmp_path: Path, entries: list[dict]) -> None:
    """``streamrec items publish FILE`` with these entries."""
    path = tmp_path / f"items-{time.time_ns()}.jsonl"
    path.write_text("".join(orjson.dumps(entry).decode() + "\n" for entry in entries))
    result = live_stack.cli("items", "publish", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"published {len(entries)} items" in result.stdout


@pytest.fixture
def client(trained_stack: TrainedStack) -> Iterator[RecommendationClient]:
    with RecommendationClient(settings=trained_stack.live.settings) as reader:
        yield reader


def served_lists(trained_stack: TrainedStack) -> dict[str, list[str]]:
    """Every trained user's stored list (item ids), once the trained model wrote them all."""
    live = trained_stack.live
    users = sorted(trained_stack.events.user_id.unique())

    def lists() -> dict[str, list[str]] | None:
        cached = {user: live.cached(user) for user in users}
        if all(c is not None and c.model_version == trained_stack.version for c in cached.values()):
            return {user: [item for item, _ in c.items] for user, c in cached.items()}  # type: ignore[union-attr]
        return None

    return wait_for(lists, 120, "every user's list from the trained model")  # type: ignore[return-value]


def test_a_hidden_item_leaves_every_list_and_the_fallback_and_comes_back(
    trained_stack: TrainedStack, client: RecommendationClient, tmp_path: Path
) -> None:
    live = trained_stack.live
    stored = served_lists(trained_stack)
    # The item most lists hold, so that hiding it touches many users at once.
    item, holders = Counter(i for items in stored.values() for i in items).most_common(1)[0]
    assert holders >= 3
    users = [user for user, items in stored.items() if item in items]
    popular = wait_for(lambda: client.get("nobody-at-all", n=live.settings.top_n), 60, "the popular list")

    hidden_at = time.time()
    publish_items(live, tmp_path, [{"item_id": item, "hidden": True}])
    try:

        def gone_everywhere() -> bool:
            reads = [client.get(user, n=live.settings.top_n) for user in users]
            fallback = client.get("nobody-at-all", n=live.settings.top_n)
            return all(item not in dict(r.items) for r in [*reads, fallback] if r is not None)

        wait_for(gone_everywhere, 30, f"hidden item {item} to leave every read", interval=0.05)
        print(
            f"hidden item gone from {len(users)} users' reads {time.time() - hidden_at:.2f} s after publishing"
        )
        # The reads are still full: the hidden item's place is taken by the next ones.
        full = client.get(users[0], n=5)
        assert full is not None and len(full.items) == 5
        # The stored popular list is rewritten without it, and users who act are re-scored without it.
        wait_for(
            lambda: item not in dict(CachedList.decode(live.redis.get(live.keys.popular)).items),
            30,
            "the stored popular list to drop the hidden item",
        )
        assert popular is not None
    finally:
        publish_items(live, tmp_path, [{"item_id": item}])  # available again

    # Available again: lists that still hold it (no rescore happened) serve it at once.
    wait_for(
        lambda: any(item in dict(client.get(user, n=live.settings.top_n).items) for user in users),
        30,
        f"item {item} to be served again",
    )


def test_an_expired_item_is_not_served(
    trained_stack: TrainedStack, client: RecommendationClient, tmp_path: Path
) -> None:
    live = trained_stack.live
    stored = served_lists(trained_stack)
    user, items = next(iter(stored.items()))
    item = items[0]
    publish_items(live, tmp_path, [{"item_id": item, "expires_at": "2001-01-01T00:00:00Z"}])
    try:
        wait_for(
            lambda: item not in dict(client.get(user, n=live.settings.top_n).items),
            30,
            "an expired item to leave the reads",
            interval=0.05,
        )
    finally:
        publish_items(live, tmp_path, [{"item_id": item}])
    wait_for(lambda: item in dict(client.get(user, n=live.settings.top_n).items), 30, "the item back")


def test_category_filters_and_the_popular_fill(
    trained_stack: TrainedStack, client: RecommendationClient, tmp_path: Path
) -> None:
    live = trained_stack.live
    stored = served_lists(trained_stack)
    category = f"cat-{time.time_ns()}"
    catalogue = sorted(set(trained_stack.events.item_id))
    in_category = catalogue[::3]  # a third of the catalogue
    publish_items(
        live, tmp_path, [{"item_id": item, "categories": [category, "all"]} for item in in_category]
    )
    user, own = next(iter(stored.items()))
    own_in_category = [item for item in own if item in in_category]
    assert own_in_category, "the user's list should hold items of a third of the catalogue"

    def filtered(n: int):
        recs = client.get(user, n=n, categories=[category])
        return (
            recs if recs is not None and all(i in in_category for i, _ in recs.items) and recs.items else None
        )

    # A read that the user's own list can answer: only its items of the category, in its order.
    # The catalog entries reach the readers one write at a time, so a read made before the last of
    # them is applied answers with fewer items: wait for all of them, not for the first answer.
    recs = wait_for(
        lambda: (r := filtered(len(own_in_category))) and [i for i, _ in r.items] == own_in_category and r,
        30,
        f"a category-filtered read of exactly {own_in_category}",
    )
    assert recs.source == "personal"

    # Asking for more than the user's list holds of the category: filled with its popular items.
    wanted = len(own_in_category) + 3
    popular_key = live.keys.popular_in(category)
    wait_for(lambda: live.redis.get(popular_key), 30, "the category's popular list in Redis")
    recs = wait_for(lambda: (r := filtered(wanted)) and len(r.items) == wanted and r, 30, "a filled read")
    assert recs.source == "mixed"
    assert [i for i, _ in recs.items[: len(own_in_category)]] == own_in_category
    assert len({i for i, _ in recs.items}) == wanted  # no item twice

    excluded = own_in_category[0]
    recs = client.get(user, n=wanted, categories=[category], exclude=[excluded])
    assert recs is not None and excluded not in dict(recs.items)

    # The same through the CLI and the HTTP API.
    result = live.cli("recommend", user, "--n", "2", "--category", category, "--exclude", excluded, "--json")
    assert result.returncode == 0, result.stderr
    answer = orjson.loads(result.stdout)
    assert [row["item_id"] for row in answer["items"]] == [i for i in own_in_category if i != excluded][
        :2
    ] or (answer["source"] == "mixed")
    base = f"http://{live.settings.api_host}:{live.settings.api_port}"
    response = httpx.get(
        f"{base}/users/{user}/recommendations",
        params=[
            ("n", str(wanted)),
            ("category", category),
            ("category", "no-such-category"),
            ("exclude", excluded),
        ],
    )
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "mixed" and excluded not in {row["item_id"] for row in body["items"]}
    assert all(row["item_id"] in in_category for row in body["items"])
    assert httpx.get(f"{base}/users/{user}/recommendations", params={"category": " "}).status_code == 422


def test_invalid_catalog_messages_go_to_their_dead_letter_topic(live_stack: LiveStack) -> None:
    live = live_stack  # Kafka only: on the session stack alone
    marker = f"bad-item-{time.time_ns()}"
    garbage = [
        b"not json " + marker.encode(),
        orjson.dumps({"hidden": True, "note": marker}),  # no item_id
        orjson.dumps({"item_id": marker, "hidden": "yes"}),
        orjson.dumps({"item_id": marker, "expires_at": "tomorrow"}),
        orjson.dumps({"item_id": marker, "categories": "shoes"}),
    ]
    producer = Producer({"bootstrap.servers": live.settings.kafka_bootstrap})
    for value in garbage:
        producer.produce(live.settings.topic_items, key=marker.encode(), value=value)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": live.settings.kafka_bootstrap,
            "group.id": marker,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([live.settings.topic_items_dlq])
    letters = []
    deadline = time.monotonic() + 60
    while len(letters) < len(garbage) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if (
            message is not None
            and not message.error()
            and marker in (letter := orjson.loads(message.value()))["payload"]
        ):
            letters.append(letter)
    consumer.close()
    assert sorted(letter["reason"] for letter in letters) == sorted(
        ["not_json", "invalid_field", "invalid_field", "invalid_field", "invalid_field"]
    )
    assert all(
        letter["source"]["topic"] == live.settings.topic_items and letter["detail"] for letter in letters
    )
