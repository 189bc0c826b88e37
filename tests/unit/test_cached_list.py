"""The Redis list contract: CachedList JSON round-trip and the public response shape."""

from __future__ import annotations

import orjson

from streamrec.client import Recommendations
from streamrec.shared.contracts import CachedList, RedisKeys


def test_round_trip_keeps_items_order_and_metadata() -> None:
    cached = CachedList(
        items=[("sku-9", 3.25), ("42", 1.0), ("b", -0.5)],
        model_version="20261129T052000.123Z-1a2b3c",
        generated_at=1_732_851_234.5,
        source="personal",
    )
    assert CachedList.from_json(cached.to_json()) == cached
    assert CachedList.from_json(cached.to_json().decode()) == cached  # str as redis-py may return


def test_json_is_the_documented_compact_form() -> None:
    cached = CachedList(
        items=[("a", 0.1234567891)], model_version=None, generated_at=10.12345, source="fallback"
    )
    assert orjson.loads(cached.to_json()) == {
        "v": None,
        "t": 10.123,
        "src": "fallback",
        "items": [["a", 0.123457]],
    }


def test_item_ids_are_strings_and_scores_floats_after_decoding() -> None:
    raw = orjson.dumps({"v": "m1", "t": 5, "src": "personal", "items": [[7, 2], ["x", 1.5]]})
    assert CachedList.from_json(raw).items == [("7", 2.0), ("x", 1.5)]


def test_to_response_is_the_public_shape_and_truncates_to_n() -> None:
    cached = CachedList(
        items=[("a", 3.0), ("b", 2.0), ("c", 1.0)], model_version="m1", generated_at=5.0, source="personal"
    )
    assert cached.to_response("u1", n=2) == {
        "user_id": "u1",
        "items": [{"item_id": "a", "score": 3.0}, {"item_id": "b", "score": 2.0}],
        "model_version": "m1",
        "generated_at": 5.0,
        "source": "personal",
    }
    assert len(cached.to_response("u1")["items"]) == 3


def test_client_recommendations_to_dict_matches_to_response() -> None:
    cached = CachedList(
        items=[("a", 3.0), ("b", 2.0)], model_version=None, generated_at=5.0, source="fallback"
    )
    recs = Recommendations.from_cached("u1", cached, n=1)
    assert recs.items == [("a", 3.0)]
    assert recs.to_dict() == cached.to_response("u1", n=1)


def test_redis_keys_share_one_prefix() -> None:
    keys = RedisKeys("shop")
    assert (keys.recs("u1"), keys.popular, keys.model) == ("shop:recs:u1", "shop:popular", "shop:model")
