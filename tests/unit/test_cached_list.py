"""The Redis list contract: CachedList binary and JSON formats, errors, size, and the public shape."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from streamrec.client import Recommendations
from streamrec.shared.cached_list import CachedList, CachedListDecodeError, RankedListEncoder
from streamrec.shared.redis_keys import RedisKeys

VERSION = "20261129T052000.123Z-1a2b3c"  # the registry's version format
# A user costs the value plus Redis's per-key overhead (about 70 bytes with a short key, and the
# value's allocation rounded up to a jemalloc size class): a value of at most 376 bytes stays in
# the 384-byte class, so a top-50 list costs under 500 bytes per user (bench/memory.py measures it).
VALUE_BUDGET = 376


def top50(make_id: object, seed: int = 1) -> CachedList:
    """A top-50 list like the scorer writes: model logits, best first."""
    rng = random.Random(seed)
    ids = rng.sample(range(1, 200_000), 50)
    scores = sorted((rng.uniform(-2.0, 9.0) for _ in ids), reverse=True)
    items = [(make_id(i), s) for i, s in zip(ids, scores, strict=True)]  # type: ignore[operator]
    return CachedList(items, VERSION, 1_764_396_900.123456, "personal")


def assert_same_list(decoded: CachedList, original: CachedList) -> None:
    """Same ids in the same order and metadata; scores within the documented precision."""
    assert [item for item, _ in decoded.items] == [item for item, _ in original.items]
    assert (decoded.model_version, decoded.generated_at, decoded.source) == (
        original.model_version,
        original.generated_at,
        original.source,
    )
    scores = [score for _, score in original.items]
    if scores:
        tolerance = (max(scores) - min(scores)) / 131_070 + 1e-6 * max(map(abs, scores))
        assert [s for _, s in decoded.items] == pytest.approx(scores, abs=tolerance)


@pytest.mark.parametrize(
    "make_id",
    [str, lambda i: f"i{i}", lambda i: f"sku-{i}", lambda i: f"item-{i:06d}", lambda i: f"é{i}x"],
    ids=["numeric", "prefixed", "sku", "zero-padded", "text"],
)
def test_binary_round_trip_keeps_ids_order_and_metadata(make_id: object) -> None:
    cached = top50(make_id)
    raw = cached.encode()
    assert raw[:1] == b"\x01"
    assert_same_list(CachedList.decode(raw), cached)


@pytest.mark.parametrize(
    "items",
    [
        [],
        [("7", 1.5)],
        [("0", 2.0), ("00", 1.0), ("٣", 0.5), ("18446744073709551616", 0.1)],  # not canonical or > 8 bytes
        [("a1", 1.0), ("b2", 1.0)],  # different prefixes, equal scores
        [("x", 1e30), ("y", -1e30)],  # popularity-sized and negative scores
        [(" padded ", 3.0), ("tab\there", 2.0)],
    ],
)
def test_binary_round_trip_of_edge_cases(items: list[tuple[str, float]]) -> None:
    for version, source in ((None, "fallback"), ("", "personal")):
        cached = CachedList(items, version, 10.5, source)  # type: ignore[arg-type]
        assert_same_list(CachedList.decode(cached.encode()), cached)


def test_scores_keep_their_order_and_the_ends_are_exact() -> None:
    cached = top50(str)
    decoded = [score for _, score in CachedList.decode(cached.encode()).items]
    assert decoded == sorted(decoded, reverse=True)
    original = [score for _, score in cached.items]
    assert decoded[-1] == pytest.approx(original[-1], rel=1e-7)  # float32 ends
    assert decoded[0] == pytest.approx(original[0], rel=1e-7)


@pytest.mark.parametrize(
    "make_id, budget",
    [(str, VALUE_BUDGET), (lambda i: f"i{i}", VALUE_BUDGET), (lambda i: f"sku-{i}", VALUE_BUDGET)],
    ids=["numeric", "prefixed", "sku"],
)
def test_a_top50_value_is_under_the_byte_budget(make_id: object, budget: int) -> None:
    cached = top50(make_id)
    assert len(cached.encode()) <= budget
    assert len(cached.encode()) < len(cached.to_json()) / 2.5


def test_old_json_values_are_still_read() -> None:
    cached = CachedList([("sku-9", 3.25), ("42", 1.0), ("b", -0.5)], VERSION, 1_732_851_234.5, "personal")
    assert cached.encode("json") == cached.to_json()
    assert CachedList.decode(cached.to_json()) == cached
    assert CachedList.decode(cached.to_json().decode()) == cached  # str as redis-py may return


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


def test_item_ids_are_strings_and_scores_floats_after_decoding_json() -> None:
    raw = orjson.dumps({"v": "m1", "t": 5, "src": "personal", "items": [[7, 2], ["x", 1.5]]})
    assert CachedList.decode(raw).items == [("7", 2.0), ("x", 1.5)]


def test_every_truncation_and_corruption_is_a_clear_decode_error() -> None:
    for cached in (top50(str), top50(lambda i: f"sku-{i}"), CachedList([], None, 1.0, "fallback")):
        raw = cached.encode()
        for cut in range(len(raw)):
            with pytest.raises(CachedListDecodeError):
                CachedList.decode(raw[:cut])
    rng = random.Random(3)
    for _ in range(300):  # garbage after a valid tag: an error or a list, never another exception
        garbage = b"\x01" + rng.randbytes(rng.randrange(60))
        try:
            CachedList.decode(garbage)
        except CachedListDecodeError:
            pass
    for bad in (b"", b"\x02abc", b"not json", b'{"v": 1', b'{"items": []}', b"\xff" * 40):
        with pytest.raises(CachedListDecodeError):
            CachedList.decode(bad)
    with pytest.raises(CachedListDecodeError, match="decode_responses"):
        CachedList.decode(top50(str).encode().decode("latin-1"))
    assert issubclass(CachedListDecodeError, ValueError)


@pytest.mark.parametrize(
    "items",
    [[("a", float("nan"))], [("a", float("inf"))], [("a", 1e39)], [("a\nb", 1.0)]],
    ids=["nan", "inf", "beyond-float32", "newline-in-id"],
)
def test_what_no_format_can_hold_is_refused_when_writing(items: list[tuple[str, float]]) -> None:
    with pytest.raises(ValueError):
        CachedList(items, None, 1.0, "personal").encode()


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


# --- RankedListEncoder: the scorer's bulk path must write exactly what CachedList.encode writes ---

VOCABULARIES = {
    "plain numbers (MovieLens)": [str(n) for n in range(1, 400)],
    "one prefix": [f"i{n}" for n in range(1, 400)],
    "wide numbers": [str(n) for n in range(70_000, 70_400)],
    "leading zeros (text ids)": [f"sku-{n:04d}" for n in range(1, 400)],
    "mixed prefixes (text ids)": [f"{kind}{n}" for n in range(1, 200) for kind in ("a", "b")],
    "numbers beyond 8 bytes (text ids)": [str(n) for n in range(1 << 64, (1 << 64) + 400)],
}


def _model_rows(n_items: int, rows: int = 12, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Rows as the graph returns them: indices, and scores best first, with the awkward cases."""
    rng = np.random.default_rng(7)
    items = rng.integers(1, n_items + 1, (rows, k))
    scores = -np.sort(-rng.normal(0, 3, (rows, k))).astype(np.float32)
    scores[1, 15:] = -np.inf  # a masked tail
    scores[2, :] = -np.inf  # nothing left to recommend
    scores[3, :] = 1.5  # all tied: no score range
    items[4, 18:] = 0  # padding index in the tail
    scores[5] = np.linspace(1e6, -1e6, k, dtype=np.float32)  # a wide range
    return items, scores


@pytest.mark.parametrize("vocabulary", VOCABULARIES.values(), ids=VOCABULARIES.keys())
def test_the_bulk_encoder_writes_what_cached_list_encode_writes(vocabulary: list[str]) -> None:
    items, scores = _model_rows(len(vocabulary))
    values = RankedListEncoder(vocabulary).encode(items, scores, "20261201T000000.000Z-abcdef", 1764547200.25)
    for row, value in enumerate(values):
        keep = np.isfinite(scores[row]) & (items[row] >= 1)
        ranked = [
            (vocabulary[i - 1], s)
            for i, s in zip(items[row][keep].tolist(), scores[row][keep].tolist(), strict=True)
        ]
        expected = CachedList(ranked, "20261201T000000.000Z-abcdef", 1764547200.25, "personal")
        assert value == expected.encode(), f"row {row}"
    assert CachedList.decode(values[2]).items == []


def test_the_bulk_encoder_refuses_a_version_the_format_cannot_hold() -> None:
    items, scores = _model_rows(10)
    with pytest.raises(ValueError, match="model version"):
        RankedListEncoder([str(n) for n in range(1, 11)]).encode(items, scores, "v" * 256, 0.0)
