"""Similar items and anonymous sessions on the running stack: scorer, api and CLI as real processes;
on the session stack (one redis-server) and on its twin on a Redis Cluster."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from test_catalog import publish_items

from streamrec.client import AsyncRecommendationClient, RecommendationClient
from streamrec.publisher import Publisher
from streamrec.scorer.model_runtime import ServedModel
from streamrec.shared.cached_list import CachedList
from streamrec.shared.model_contract import ITEM_EMBEDDINGS_FILE, MANIFEST_FILE
from streamrec.shared.redis_connection import connect, get_many
from streamrec.shared.registry import ModelRegistry, new_version

from support import LiveStack, TrainedStack, on_each_redis, wait_for

pytestmark = pytest.mark.integration

trained_stack = on_each_redis("trained_stack")  # each test once on one server, once on a cluster


def similar_lists_written(live: LiveStack, version: str) -> bool:
    raw = live.redis.get(live.keys.similar_model)
    return raw is not None and raw.decode() == version


def cosines(live: LiveStack, version: str, item: str) -> dict[str, float]:
    """The item's cosine with every other item over the version's embeddings, computed here in float64."""
    registry = ModelRegistry(live.settings.model_dir)
    vocabulary = registry.vocabulary(version)
    vectors = np.load(registry.path(version) / ITEM_EMBEDDINGS_FILE).astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    row = vocabulary.index(item)
    cosine = vectors @ vectors[row]
    return {
        other: float(value)
        for n, (other, value) in enumerate(zip(vocabulary, cosine, strict=True))
        if n != row
    }


def assert_nearest(live: LiveStack, version: str, item: str, listed: list[str], k: int) -> None:
    """``listed`` is the item's ``k`` nearest items, best first: the same cosine at every rank as the
    float64 ranking (the scorer computes in float32, so near-ties may come in either order)."""
    similarity = cosines(live, version, item)
    best = sorted(similarity.values(), reverse=True)[:k]
    assert len(listed) == k and len(set(listed)) == k and item not in listed
    assert np.allclose([similarity[other] for other in listed], best, atol=1e-5), (listed, best)


def api_url(live: LiveStack, path: str) -> str:
    return f"http://{live.settings.api_host}:{live.settings.api_port}{path}"


def test_every_item_gets_its_nearest_items_in_the_served_model(trained_stack: TrainedStack) -> None:
    live, version = trained_stack.live, trained_stack.version
    wait_for(lambda: similar_lists_written(live, version), 120, f"similar lists of {version}")
    vocabulary = ModelRegistry(live.settings.model_dir).vocabulary(version)
    for item in vocabulary:
        raw = live.redis.get(live.keys.similar(item))
        assert raw is not None, f"no similar list for {item}"
        cached = CachedList.decode(raw)
        assert cached.model_version == version and cached.source == "personal"
        assert_nearest(live, version, item, [other for other, _ in cached.items], live.settings.top_n)

    # Through the client, the HTTP API and the CLI: the same list, cut to n.
    item = vocabulary[0]
    with RecommendationClient(settings=live.settings) as client:
        found = client.similar(item, n=5)
    assert found is not None
    expected = [other for other, _ in found.items]
    assert_nearest(live, version, item, expected, 5)
    assert found.source == "personal" and found.model_version == version
    response = httpx.get(api_url(live, f"/items/{item}/similar"), params={"n": 5}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["item_id"] == item and body["source"] == "personal" and body["model_version"] == version
    assert [entry["item_id"] for entry in body["items"]] == expected
    result = live.cli("similar", item, "--n", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == found.to_dict()
    result = live.cli("similar", item, "--n", "3")
    assert result.returncode == 0 and f"item {item}: personal, model {version}" in result.stdout
    assert [line.split()[1] for line in result.stdout.splitlines()[1:]] == expected[:3]


def test_an_item_the_model_does_not_know_gets_co_occurring_items_then_popular_ones(
    trained_stack: TrainedStack,
) -> None:
    live = trained_stack.live
    vocabulary = ModelRegistry(live.settings.model_dir).vocabulary(trained_stack.version)
    # Two anonymous shoppers view a known item, then an item no model knows yet.
    now = time.time()
    rows = [
        (user, item, now + step)
        for user in ("sim-a", "sim-b")
        for step, item in enumerate([vocabulary[0], vocabulary[1], "brand-new-item"])
    ]
    with RecommendationClient(settings=live.settings) as client:
        with Publisher(settings=live.settings) as publisher:
            for user, item, timestamp in rows:
                publisher.publish_event(
                    {"user_id": user, "item_id": item, "event_type": "view", "timestamp": timestamp}
                )
        # Before the scorer wrote its list, the new item gets the popular items.
        wait_for(lambda: live.redis.exists(live.keys.similar("brand-new-item")), 90, "the new item's list")
        found = client.similar("brand-new-item")
        assert found is not None and found.source == "fallback" and found.model_version is None
        assert {other for other, _ in found.items} == {vocabulary[0], vocabulary[1]}
        assert dict(found.items)[vocabulary[0]] == pytest.approx(2.0, abs=1e-3)  # both shoppers

        # Nothing known about an item at all: the popular items.
        popular = CachedList.decode(live.redis.get(live.keys.popular))  # type: ignore[arg-type]
        unseen = client.similar("never-seen-item", n=5)
        assert unseen is not None and unseen.source == "fallback"
        assert unseen.items == popular.items[:5]
    response = httpx.get(api_url(live, "/items/never-seen-item/similar"), params={"n": 5}, timeout=10)
    assert response.status_code == 200 and response.json()["source"] == "fallback"


def test_a_session_is_scored_with_the_served_model_in_the_api_and_the_client(
    trained_stack: TrainedStack,
) -> None:
    live, version = trained_stack.live, trained_stack.version
    registry = ModelRegistry(live.settings.model_dir)
    vocabulary = registry.vocabulary(version)
    session = [vocabulary[3], "an-item-no-model-knows", vocabulary[7], vocabulary[11]]
    model = ServedModel.load(registry, version)
    expected = [item for item, _ in model.recommend([session], k=10)[0]]

    response = httpx.post(api_url(live, "/recommendations"), json={"items": session, "n": 10}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "personal" and body["model_version"] == version
    assert [entry["item_id"] for entry in body["items"]] == expected
    assert not set(session) & {entry["item_id"] for entry in body["items"]}

    # exclude leaves items out; the rest moves up.
    response = httpx.post(
        api_url(live, "/recommendations"),
        json={"items": session, "n": 5, "exclude": expected[:2]},
        timeout=10,
    )
    assert [entry["item_id"] for entry in response.json()["items"]] == expected[2:7]

    with RecommendationClient(settings=live.settings) as client:
        recs = client.recommend_session(session, n=10)
        assert recs is not None and [item for item, _ in recs.items] == expected
        assert recs.model_version == version and recs.source == "personal"
        only_unknown = client.recommend_session(["nobody-knows-this"], n=3)
    popular = CachedList.decode(live.redis.get(live.keys.popular))  # type: ignore[arg-type]
    assert only_unknown is not None and only_unknown.source == "fallback"
    assert only_unknown.items == popular.items[:3]

    async def read_async() -> list[str]:
        async with AsyncRecommendationClient(settings=live.settings) as client:
            recs = await client.recommend_session(session, n=10)
            assert recs is not None
            return [item for item, _ in recs.items]

    assert asyncio.run(read_async()) == expected

    for bad in ({"n": 3}, {"items": "not-a-list"}, {"items": session, "n": 0}, {"items": [""]}):
        response = httpx.post(api_url(live, "/recommendations"), json=bad, timeout=10)
        assert response.status_code == 422, (bad, response.text)


def test_similar_items_and_sessions_go_through_the_read_filters(
    trained_stack: TrainedStack, tmp_path: Path
) -> None:
    live, version = trained_stack.live, trained_stack.version
    wait_for(lambda: similar_lists_written(live, version), 120, f"similar lists of {version}")
    vocabulary = ModelRegistry(live.settings.model_dir).vocabulary(version)
    item = vocabulary[5]
    stored = CachedList.decode(live.redis.get(live.keys.similar(item)))  # type: ignore[arg-type]
    nearest = [other for other, _ in stored.items][:6]  # as the scorer wrote them (checked above)
    session = [vocabulary[8], vocabulary[9]]
    top = [entry["item_id"] for entry in post_session(live, {"items": session, "n": 3})["items"]]
    hidden, shoe = nearest[0], nearest[3]
    publish_items(
        live,
        tmp_path,
        [
            {"item_id": hidden, "hidden": True},
            {"item_id": top[0], "hidden": True},
            {"item_id": shoe, "categories": ["shoes"]},
        ],
    )
    try:
        with RecommendationClient(settings=live.settings) as client:
            wait_for(
                lambda: (found := client.similar(item, n=5)) and hidden not in dict(found.items),
                30,
                f"hidden item {hidden} to leave {item}'s similar items",
            )
            assert [other for other, _ in client.similar(item, n=5).items] == nearest[1:6]  # type: ignore[union-attr]
            shoes = client.similar(item, n=5, categories="shoes")
            assert shoes is not None and [other for other, _ in shoes.items] == [shoe]
            assert shoes.source == "personal"
            wait_for(
                lambda: top[0] not in dict(client.recommend_session(session, n=3).items),  # type: ignore[union-attr]
                30,
                f"hidden item {top[0]} to leave the session's list",
            )
        response = httpx.get(
            api_url(live, f"/items/{item}/similar"), params={"n": 5, "category": "shoes"}, timeout=10
        )
        assert [entry["item_id"] for entry in response.json()["items"]] == [shoe]

        def session_ids() -> list[str]:
            return [entry["item_id"] for entry in post_session(live, {"items": session, "n": 3})["items"]]

        ids = wait_for(
            lambda: top[0] not in (ids := session_ids()) and ids, 30, "the api to drop the hidden item"
        )
        assert ids[:2] == top[1:3]  # type: ignore[index]  # the rest moved up
        shoes_only = post_session(live, {"items": session, "n": 3, "category": "shoes"})
        assert {entry["item_id"] for entry in shoes_only["items"]} <= {shoe}
    finally:
        publish_items(live, tmp_path, [{"item_id": hidden}, {"item_id": top[0]}, {"item_id": shoe}])


def post_session(live: LiveStack, body: dict) -> dict:
    response = httpx.post(api_url(live, "/recommendations"), json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.changes_model
def test_similar_lists_and_sessions_move_to_a_new_model_without_a_gap(trained_stack: TrainedStack) -> None:
    live = trained_stack.live
    registry = ModelRegistry(live.settings.model_dir)
    served = registry.promoted_version()
    assert served is not None
    wait_for(lambda: similar_lists_written(live, served), 120, f"similar lists of {served}")
    vocabulary = registry.vocabulary(served)
    session = vocabulary[:3]

    def session_version() -> str:
        response = httpx.post(api_url(live, "/recommendations"), json={"items": session}, timeout=30)
        return response.json()["model_version"]

    # An earlier test may have promoted `served` just now: the api checks every few seconds.
    wait_for(lambda: session_version() == served, 60, f"the api to score sessions with {served}")

    # A copy of the served version under a new name: its lists must move over, none ever missing.
    version = new_version()
    shutil.copytree(registry.path(served), registry.path(version))
    manifest = replace(registry.manifest(served), version=version)
    (registry.path(version) / MANIFEST_FILE).write_bytes(manifest.to_json())

    reader = connect(live.settings)
    keys = [live.keys.similar(item) for item in vocabulary]
    missing: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            missing.extend(key for key, raw in zip(keys, get_many(reader, keys), strict=True) if raw is None)
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        result = live.cli("models", "promote", version, "--reason", "similar-items test")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: similar_lists_written(live, version), 120, f"similar lists of {version}")
    finally:
        stop.set()
        poller.join(5)
        reader.close()
    assert missing == []
    for raw in get_many(live.redis, keys):
        assert CachedList.decode(raw).model_version == version  # type: ignore[arg-type]
    wait_for(lambda: session_version() == version, 60, f"the api to score sessions with {version}")
