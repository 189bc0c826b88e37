"""The Redis key layout on a Redis Cluster: keys used together share a slot, per-user keys spread.

A cluster serves each of its 16384 hash slots from one primary; a multi-key command or a
transaction may only touch one slot, and a non-transactional pipeline is split per node (so only
keys of one slot keep their order). The slot is CRC16 of the key, or of the part inside the
first ``{…}`` (a hash tag). redis-py's ``key_slot`` computes it as the cluster does.

streamrec's keys used together (docs/architecture.md, Contract 3):

- the scorer writes ``catalog`` then ``catalog_version`` in one pipeline, and readers read the
  version, then the catalog: one slot, so the version never lands before its catalog;
- everything else is read or written together only in non-transactional pipelines (users' lists,
  category popular lists, similar lists) or with ``DEL`` of many users, which redis-py's cluster
  client splits per slot: those keys must spread, not share.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from streamrec.shared.redis_keys import RedisKeys

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ["streamrec", "shop-eu", "tenant:7", "a"]


def slot(key: str) -> int:
    """The cluster slot of ``key``."""
    return key_slot(key.encode())


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_catalog_and_its_version_share_a_slot(prefix: str) -> None:
    keys = RedisKeys(prefix)
    assert slot(keys.catalog_version) == slot(keys.catalog)
    # The catalog's own name did not change: earlier readers still find it.
    assert keys.catalog == f"{prefix}:catalog"
    assert keys.legacy_catalog_version == f"{prefix}:catalog:version"


@pytest.mark.parametrize("prefix", PREFIXES)
def test_only_the_catalog_version_carries_a_hash_tag(prefix: str) -> None:
    keys = RedisKeys(prefix)
    names = [
        keys.recs("u1"),
        keys.popular,
        keys.model,
        keys.similar("i1"),
        keys.similar_model,
        keys.popular_in("shoes"),
        keys.catalog,
        keys.legacy_catalog_version,
    ]
    assert not [name for name in names if "{" in name]
    assert keys.catalog_version.count("{") == 1


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_key_starts_with_the_prefix(prefix: str) -> None:
    # ACL key patterns (`~streamrec:*`, docs/reliability.md) grant streamrec's keys by the prefix.
    keys = RedisKeys(prefix)
    names = [keys.recs("u1"), keys.popular, keys.model, keys.similar("i1"), keys.similar_model]
    names += [keys.popular_in("shoes"), keys.catalog, keys.catalog_version, keys.legacy_catalog_version]
    assert [name for name in names if not name.startswith(f"{prefix}:")] == []


@pytest.mark.parametrize(("what", "key_of"), [("recs", RedisKeys.recs), ("similar", RedisKeys.similar)])
def test_per_user_and_per_item_keys_spread_over_every_slot_range(what: str, key_of: object) -> None:
    keys = RedisKeys("streamrec")
    ids = [f"user-{n}" for n in range(50_000)] if what == "recs" else [str(n) for n in range(50_000)]
    slots = [slot(key_of(keys, i)) for i in ids]  # type: ignore[operator]
    # 16 equal ranges of slots (a cluster of 16 primaries at most, each one range): each gets
    # its share, within 20%; and the keys take most of the slots there are.
    ranges = Counter(s * 16 // REDIS_CLUSTER_HASH_SLOTS for s in slots)
    assert len(ranges) == 16
    assert all(0.8 * len(ids) / 16 <= count <= 1.2 * len(ids) / 16 for count in ranges.values()), ranges
    assert len(set(slots)) > 0.9 * REDIS_CLUSTER_HASH_SLOTS


def test_a_three_primary_cluster_gets_a_third_of_the_users_each() -> None:
    # redis-cli --cluster create gives 3 primaries slots 0-5460, 5461-10922, 10923-16383.
    keys = RedisKeys("streamrec")
    shards = Counter(min(slot(keys.recs(str(n))) // 5461, 2) for n in range(30_000))
    assert all(9_000 <= count <= 11_000 for count in shards.values()), shards


# Multi-key work that a cluster must see within one slot: transactions (MULTI/EXEC, a pipeline
# with transaction=True, WATCH) and Lua scripts. streamrec has none; a new one must name keys of
# one slot (a hash tag) and be added to the layout's test above.
ONE_SLOT_ONLY = re.compile(
    r"transaction=True|\.pipeline\(\)|\.watch\(|\.multi\(|\.eval(sha)?\([^)]|register_script\(|"
    r"\.transaction\(|\.rename\(|\.renamenx\(|\.smove\(|\.lmove\(|\.sunionstore\(|\.zunionstore\("
)


def test_no_transaction_or_script_spans_keys_of_several_slots() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("shared", "services", "streamrec", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ONE_SLOT_ONLY.search(line) and "os.rename" not in line
    ]
    assert offenders == []
