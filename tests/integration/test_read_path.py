"""The read path on a real Redis, one server and a Redis Cluster: the Python client and the HTTP
API (the scorer is not needed)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from streamrec.api.app import create_app
from streamrec.client import AsyncRecommendationClient, RecommendationClient, Recommendations, resolve_user_id
from streamrec.processes import free_port
from streamrec.shared.cached_list import CachedList
from streamrec.shared.redis_connection import connect
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import Settings

from support import clear_prefix, only_the_strategies

pytestmark = pytest.mark.integration

PREFIX = "readtest"
# Scores on the binary format's grid (16 bits between the lowest and the highest), so they read back exactly.
PERSONAL = CachedList([("a", 3.0), ("b", 2.0), ("c", 0.0)], "m-1", 1_700_000_000.5, "personal")
POPULAR = CachedList([("p1", 9.0), ("p2", 8.0)], None, 1_700_000_001.0, "fallback")


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    """The Redis the client reads (``redis_url``: one redis-server, then a Redis Cluster; see
    tests/integration/conftest.py), without this module's keys before each test; the user "42"
    has a personal list."""
    connection = connect(Settings(redis_url=redis_url))
    clear_prefix(connection, PREFIX)
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


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_api_answers_503_not_a_traceback_when_redis_is_down(scheme: str) -> None:
    dead = f"{scheme}://127.0.0.1:{free_port()}/0"  # nothing listens there
    with TestClient(create_app(settings_for(dead)), raise_server_exceptions=False) as http:
        response = http.get("/users/42/recommendations")
        assert response.status_code == 503 and "Redis" in response.json()["detail"]
        assert dead.split("//")[1].split("/")[0] not in response.text  # no internal address leaks
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200


def test_api_is_read_only(store: redis.Redis, redis_url: str) -> None:
    with TestClient(create_app(settings_for(redis_url))) as http:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = http.request(method, "/users/42/recommendations", json={"items": ["x"]})
            assert response.status_code == 405, method
    assert CachedList.decode(store.get(RedisKeys(PREFIX).recs("42"))) == PERSONAL  # untouched


def test_lists_written_as_json_by_an_older_scorer_are_still_served(
    store: redis.Redis, redis_url: str
) -> None:
    store.set(RedisKeys(PREFIX).recs("old"), PERSONAL.to_json())
    with RecommendationClient(redis_url, prefix=PREFIX) as client:
        assert client.get("old") == Recommendations.from_cached("old", PERSONAL)
    with TestClient(create_app(settings_for(redis_url))) as http:
        assert http.get("/users/old/recommendations").json() == PERSONAL.to_response("old")


# Path segments a client might send: any text, ids at and past the length limit, control
# characters, whitespace only, path tricks; and `n` as any text or any integer.
USER_SEGMENTS = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), min_size=250, max_size=300),
    st.sampled_from(
        ["42", " 42 ", "%00", "\x00", "a\nb", "\r", "   ", "..", ".", "a/b", "?", "#", "%", "%zz"]
    ),
    st.integers().map(str),
)
N_VALUES = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.integers(min_value=-2, max_value=12).map(str),
    st.text(max_size=12),
    st.sampled_from(["1e3", "1.0", " 5", "0x10", "NaN", "inf", "", "99999999999999999999999"]),
    st.none(),  # n left out: the default
)
MAX_N = 10
MAX_RESPONSE_BYTES = 4 * 1024  # 10 items of short ids, or one error message quoting a 300-char id


def classify(user_segment: str, n: str | None) -> str | None:
    """ "valid" if the endpoint must answer with recommendations, "invalid" if it must refuse
    (4xx), None where FastAPI's integer parsing decides ("1.0", " 5": either is fine)."""
    try:
        resolve_user_id(user_segment)
    except ValueError:
        return "invalid"
    if n is None or (re.fullmatch(r"[0-9]+", n) and 1 <= int(n) <= MAX_N):
        return "valid"
    try:
        number = float(n)
    except ValueError:
        return "invalid"
    return "invalid" if not math.isfinite(number) or not 1 <= number <= MAX_N else None


def test_api_never_answers_5xx_to_generated_user_ids_and_n(store: redis.Redis, redis_url: str) -> None:
    store.set(RedisKeys(PREFIX).popular, POPULAR.encode())  # every valid request has an answer
    app = create_app(settings_for(redis_url, api_max_n=MAX_N))
    with TestClient(app, raise_server_exceptions=False) as http:

        @settings(
            max_examples=400,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(USER_SEGMENTS, N_VALUES)
        def check(user_segment: str, n: str | None) -> None:
            # One path segment, as a client would send it (a "/" in an id is %2F).
            url = f"/users/{quote(user_segment, safe='')}/recommendations"
            response = http.get(url, params=None if n is None else {"n": n})
            assert response.status_code < 500, (url, n, response.text)
            assert len(response.content) <= MAX_RESPONSE_BYTES
            # Ids a router cannot see as one segment ("a/b" decoded, "." and "..") may 404; the test
            # client decodes a "%" once more than a server does ("%00" arrives as a NUL: 422).
            routable = not set(user_segment) & {"/", "%"} and user_segment.strip() not in (".", "..")
            expected = classify(user_segment, n)
            if expected == "valid" and routable:
                assert response.status_code == 200, (url, n, response.text)
            elif expected == "invalid":
                assert 400 <= response.status_code < 500, (url, n, response.status_code)
            if response.status_code == 200:
                assert len(response.json()["items"]) <= MAX_N

        with only_the_strategies():  # the same requests on every run
            check()
