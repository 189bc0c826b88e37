"""The read path on a real Redis: the Python client and the HTTP API (the scorer is not needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from streamrec.api.app import create_app
from streamrec.client import AsyncRecommendationClient, RecommendationClient, Recommendations
from streamrec.embedded import start_redis
from streamrec.processes import free_port
from streamrec.shared.contracts import CachedList, RedisKeys
from streamrec.shared.settings import Settings

pytestmark = pytest.mark.integration

PREFIX = "readtest"
# Scores on the binary format's grid (16 bits between the lowest and the highest), so they read back exactly.
PERSONAL = CachedList([("a", 3.0), ("b", 2.0), ("c", 0.0)], "m-1", 1_700_000_000.5, "personal")
POPULAR = CachedList([("p1", 9.0), ("p2", 8.0)], None, 1_700_000_001.0, "fallback")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real, empty redis-server for this module."""
    child, url = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield url
    finally:
        child.stop()


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    """The Redis the client reads, emptied before each test; the user "42" has a personal list."""
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    connection.set(RedisKeys(PREFIX).recs("42"), PERSONAL.encode())
    yield connection
    connection.close()


def settings_for(url: str, **overrides: object) -> Settings:
    """Settings reading ``url`` with the test key prefix."""
    return Settings(redis_url=url, redis_prefix=PREFIX, **overrides)  # type: ignore[arg-type]


def test_client_reads_a_personal_list_and_normalises_the_user_id(store: redis.Redis, redis_url: str) -> None:
    with RecommendationClient(redis_url, prefix=PREFIX) as client:
        recs = client.get(" 42 ", n=2)
        assert recs is not None
        assert recs.items == [("a", 3.0), ("b", 2.0)]
        assert recs.to_dict() == PERSONAL.to_response("42", n=2)
        assert client.get(42) == client.get("42")


def test_client_falls_back_to_popular_then_to_none(store: redis.Redis, redis_url: str) -> None:
    with RecommendationClient(settings=settings_for(redis_url)) as client:
        assert client.get("stranger") is None
        store.set(RedisKeys(PREFIX).popular, POPULAR.encode())
        recs = client.get("stranger", n=1)
        assert recs is not None and recs.source == "fallback" and recs.items == [("p1", 9.0)]
        with pytest.raises(ValueError):
            client.get("   ")
        with pytest.raises(ValueError):
            client.get("42", n=0)


def test_async_client_gives_the_same_answers(store: redis.Redis, redis_url: str) -> None:
    store.set(RedisKeys(PREFIX).popular, POPULAR.encode())
    store.set(RedisKeys(PREFIX).model, "m-1")

    async def read() -> tuple[object, ...]:
        async with AsyncRecommendationClient(redis_url, prefix=PREFIX) as client:
            return await client.get("42", n=2), await client.get("stranger"), await client.model_version()

    with RecommendationClient(redis_url, prefix=PREFIX) as sync_client:
        expected = (sync_client.get("42", n=2), sync_client.get("stranger"), sync_client.model_version())
    assert asyncio.run(read()) == expected


def test_api_serves_the_documented_json(store: redis.Redis, redis_url: str) -> None:
    with TestClient(create_app(settings_for(redis_url))) as http:
        response = http.get("/users/42/recommendations", params={"n": 2})
        assert response.status_code == 200
        assert response.json() == PERSONAL.to_response("42", n=2)
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200


def test_api_falls_back_to_popular_and_404s_without_it(store: redis.Redis, redis_url: str) -> None:
    with TestClient(create_app(settings_for(redis_url))) as http:
        missing = http.get("/users/stranger/recommendations")
        assert missing.status_code == 404 and "stranger" in missing.json()["detail"]
        store.set(RedisKeys(PREFIX).popular, POPULAR.encode())
        fallback = http.get("/users/stranger/recommendations")
        assert fallback.status_code == 200 and fallback.json()["source"] == "fallback"
        assert [item["item_id"] for item in fallback.json()["items"]] == ["p1", "p2"]


def test_api_rejects_bad_n_and_bad_user_ids_with_422(store: redis.Redis, redis_url: str) -> None:
    with TestClient(create_app(settings_for(redis_url, api_max_n=10))) as http:
        for n in (0, 11, "x"):
            assert http.get("/users/42/recommendations", params={"n": n}).status_code == 422
        assert http.get("/users/42/recommendations", params={"n": 10}).status_code == 200
        assert http.get("/users/%20/recommendations").status_code == 422
        assert http.get("/users/" + "u" * 300 + "/recommendations").status_code == 422


def test_api_answers_503_not_a_traceback_when_redis_is_down() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with TestClient(create_app(settings_for(dead)), raise_server_exceptions=False) as http:
        response = http.get("/users/42/recommendations")
        assert response.status_code == 503 and "Redis" in response.json()["detail"]
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200


def test_lists_written_as_json_by_an_older_scorer_are_still_served(
    store: redis.Redis, redis_url: str
) -> None:
    store.set(RedisKeys(PREFIX).recs("old"), PERSONAL.to_json())
    with RecommendationClient(redis_url, prefix=PREFIX) as client:
        assert client.get("old") == Recommendations.from_cached("old", PERSONAL)
    with TestClient(create_app(settings_for(redis_url))) as http:
        assert http.get("/users/old/recommendations").json() == PERSONAL.to_response("old")
