"""Read-time filters on a real Redis, one server and a Redis Cluster (``redis_url``, see
tests/integration/conftest.py): hidden and expired items, categories, exclude, the popular fill."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from streamrec.api.app import create_app
from streamrec.client import AsyncRecommendationClient, RecommendationClient
from streamrec.shared.cached_list import CachedList
from streamrec.shared.catalog import ItemRecord, ServingCatalog
from streamrec.shared.redis_connection import connect
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import Settings

from support import clear_prefix

pytestmark = pytest.mark.integration

PREFIX = "filtertest"
KEYS = RedisKeys(PREFIX)
OWN = CachedList([(f"i{n}", 10.0 - n) for n in range(10)], "m-1", 1_700_000_000.0, "personal")
POPULAR = CachedList([(f"p{n}", 5.0 - n) for n in range(5)], None, 1_700_000_001.0, "fallback")
SHOES_POPULAR = CachedList([("i1", 9.0), ("s1", 4.5), ("s2", 3.5)], None, 1_700_000_001.0, "fallback")
SALE_POPULAR = CachedList([("s1", 4.5), ("s3", 4.0)], None, 1_700_000_001.0, "fallback")


def write_catalog(store: redis.Redis, entries: list[ItemRecord], version: int) -> None:
    """The serving catalog as the scorer writes it: the value, then its version."""
    catalog = ServingCatalog()
    for record in entries:
        catalog.apply(record.item_id, record)
    catalog.offset = version
    store.set(KEYS.catalog, catalog.encode())
    store.set(KEYS.catalog_version, str(version))


CATALOG = [
    ItemRecord("i0", hidden=True),
    ItemRecord("i1", categories=("shoes",)),
    ItemRecord("i2", categories=("shoes", "sale")),
    ItemRecord("i3", expires_at=1.0),  # long expired
    ItemRecord("i4", categories=("sale",), expires_at=time.time() + 3600),
    ItemRecord("s1", categories=("shoes", "sale")),
    ItemRecord("s2", categories=("shoes",)),
    ItemRecord("s3", categories=("sale",)),
    ItemRecord("p1", hidden=True),
]


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    connection = connect(Settings(redis_url=redis_url))  # one server, then a Redis Cluster (conftest)
    clear_prefix(connection, PREFIX)
    connection.set(KEYS.recs("42"), OWN.encode())
    connection.set(KEYS.popular, POPULAR.encode())
    connection.set(KEYS.popular_in("shoes"), SHOES_POPULAR.encode())
    connection.set(KEYS.popular_in("sale"), SALE_POPULAR.encode())
    write_catalog(connection, CATALOG, 1)
    yield connection
    connection.close()


@pytest.fixture
def client(store: redis.Redis, redis_url: str) -> Iterator[RecommendationClient]:
    with RecommendationClient(redis_url, prefix=PREFIX) as reader:
        yield reader


def ids(recs) -> list[str]:
    return [item for item, _ in recs.items]


def test_hidden_and_expired_items_are_never_returned(client: RecommendationClient) -> None:
    recs = client.get("42", n=5)
    assert ids(recs) == ["i1", "i2", "i4", "i5", "i6"] and recs.source == "personal"
    fallback = client.get("someone-else", n=5)  # the popular list, hidden p1 left out
    assert ids(fallback) == ["p0", "p2", "p3", "p4"] and fallback.source == "fallback"


def test_categories_select_and_exclude_drops(client: RecommendationClient) -> None:
    assert ids(client.get("42", n=2, categories=["shoes"])) == ["i1", "i2"]
    assert ids(client.get("42", n=2, categories="sale")) == ["i2", "i4"]
    assert ids(client.get("42", n=2, categories=["sale", "shoes"], exclude=["i2"])) == ["i1", "i4"]
    assert ids(client.get("42", n=3, exclude=["i1", "i2"])) == ["i4", "i5", "i6"]


def test_a_short_filtered_answer_is_filled_from_the_categories_popular_items(
    client: RecommendationClient,
) -> None:
    recs = client.get("42", n=4, categories=["shoes"])
    # The user's two shoes, then the shoes' popular items not already there (i1 is).
    assert ids(recs) == ["i1", "i2", "s1", "s2"] and recs.source == "mixed"
    assert recs.model_version == "m-1"
    # Two categories: their popular lists merged by score, each item once.
    recs = client.get("42", n=6, categories=["shoes", "sale"])
    assert ids(recs) == ["i1", "i2", "i4", "s1", "s3", "s2"] and recs.source == "mixed"
    # A user without a list: the categories' popular items only.
    recs = client.get("new-user", n=3, categories=["sale"], exclude=["s1"])
    assert ids(recs) == ["s3"] and recs.source == "fallback"
    # A category nobody has: nothing to fill with, the answer is just shorter.
    assert ids(client.get("42", n=3, categories=["hats"])) == []


def test_a_new_catalog_version_is_read_within_the_check_interval(
    store: redis.Redis, client: RecommendationClient
) -> None:
    assert "i5" in ids(client.get("42", n=10))
    write_catalog(store, [*CATALOG, ItemRecord("i5", hidden=True)], 2)
    deadline = time.monotonic() + 5
    while "i5" in ids(client.get("42", n=10)):
        assert time.monotonic() < deadline, "the hidden item was still served after 5 s"
        time.sleep(0.05)
    write_catalog(store, CATALOG, 3)  # available again
    deadline = time.monotonic() + 5
    while "i5" not in ids(client.get("42", n=10)):
        assert time.monotonic() < deadline, "the item was not served again after 5 s"
        time.sleep(0.05)


def test_a_catalog_version_under_its_earlier_key_is_read(store: redis.Redis, redis_url: str) -> None:
    # A scorer of an earlier version writes the version under {prefix}:catalog:version only.
    store.delete(KEYS.catalog_version)
    store.set(KEYS.legacy_catalog_version, "1")
    with RecommendationClient(redis_url, prefix=PREFIX) as reader:
        assert ids(reader.get("42", n=3)) == ["i1", "i2", "i4"]  # i0 hidden, i3 expired


def test_without_a_catalog_nothing_is_filtered(store: redis.Redis, redis_url: str) -> None:
    store.delete(KEYS.catalog, KEYS.catalog_version)
    with RecommendationClient(redis_url, prefix=PREFIX) as fresh:
        assert ids(fresh.get("42", n=3)) == ["i0", "i1", "i2"]


def test_filter_items_and_categories_of(client: RecommendationClient) -> None:
    assert client.filter_items([("i0", 3.0), ("s1", 2.0), ("x", 1.0)], n=5) == [("s1", 2.0), ("x", 1.0)]
    assert client.filter_items([("i0", 3.0), ("s1", 2.0), ("x", 1.0)], n=5, categories=["sale"]) == [
        ("s1", 2.0)
    ]
    assert client.categories_of("i2") == ["shoes", "sale"] and client.categories_of("x") == []
    with pytest.raises(ValueError, match="invalid category"):
        client.get("42", categories=["\n"])


def test_the_async_client_filters_the_same(store: redis.Redis, redis_url: str) -> None:
    async def read():
        async with AsyncRecommendationClient(redis_url, prefix=PREFIX) as reader:
            return await reader.get("42", n=4, categories=["shoes"], exclude=["s2"])

    recs = asyncio.run(read())
    assert ids(recs) == ["i1", "i2", "s1"] and recs.source == "mixed"


def test_the_http_endpoint_takes_repeated_category_and_exclude(store: redis.Redis, redis_url: str) -> None:
    app = create_app(Settings(redis_url=redis_url, redis_prefix=PREFIX))
    with TestClient(app) as http:
        response = http.get(
            "/users/42/recommendations?n=4&category=shoes&category=sale&exclude=i1&exclude=i4"
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert [row["item_id"] for row in body["items"]] == ["i2", "s1", "s3", "s2"]
        assert body["source"] == "mixed"
        assert http.get("/users/42/recommendations?category=%0A").status_code == 422
