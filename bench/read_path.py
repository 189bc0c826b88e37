"""Read latency: a client's one-lookup read and the HTTP endpoint, against a raw Redis GET.

Real Redis holds one user's top-50 list as the scorer writes it: one redis-server (the embedded
one), then a Redis Cluster, then a Sentinel group (``bench/redis_topologies.py``), each with a
section of its own. Each run times ``requests`` sequential reads of each kind over loopback; the
figures are the p50 and p99 of a run (median of the runs' values), against the raw ``GET`` of
the same Redis.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
import redis.cluster

from bench.harness import RUNS, Section, image_path, latency_figure, log_progress
from bench.plots import latency_cdf
from bench.redis_topologies import CLUSTER, ONE_SERVER, SENTINEL, TOPOLOGIES, RedisTopology
from bench.stack import api_process
from streamrec.client import RecommendationClient
from streamrec.processes import free_port
from streamrec.shared.cached_list import CachedList
from streamrec.shared.catalog import ItemRecord, ServingCatalog
from streamrec.shared.redis_connection import LazyRedisCluster, SyncRedis, connect
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.settings import Settings

USER = "bench-user"
CATALOG_ITEMS = 10_000
CATEGORIES = 5  # item i is in category c{i % 5}
LABELS = {
    "raw": "raw GET (baseline)",
    "client": "client get()",
    "filtered": "client get(), category filter",
    "filled": "client get(), category filter + fill",
    "http": "HTTP GET",
}


def write_catalog(store: SyncRedis, keys: RedisKeys) -> None:
    """A serving catalog and the categories' popular lists, as the scorer writes them."""
    catalog = ServingCatalog()
    for i in range(CATALOG_ITEMS):
        item = f"item-{i:05d}"
        catalog.apply(item, ItemRecord(item, hidden=i % 100 == 99, categories=(f"c{i % CATEGORIES}",)))
    catalog.offset = 1
    store.set(keys.catalog, catalog.encode())
    store.set(keys.catalog_version, b"1")
    for c in range(CATEGORIES):
        popular = [(f"item-{i:05d}", 100.0 - i / 100) for i in range(c, CATALOG_ITEMS, CATEGORIES)][:50]
        store.set(keys.popular_in(f"c{c}"), CachedList(popular, None, time.time(), "fallback").encode())


def _interleaved(reads: dict[str, Callable[[], object]], requests: int) -> dict[str, list[float]]:
    """``requests`` timings of each read, taken in turn (one of each, then again), so that a burst
    of noise on the shared machine hits every kind alike and their ratios hold."""
    timings: dict[str, list[float]] = {kind: [] for kind in reads}
    for _ in range(requests):
        for kind, read in reads.items():
            started = time.perf_counter()
            read()
            timings[kind].append(time.perf_counter() - started)
    return timings


def raw_client(store: SyncRedis) -> redis.Redis | redis.cluster.RedisCluster:
    """The redis-py client under ``connect()``'s: a cluster's own RedisCluster (the baseline's
    ``GET`` is redis-py's, without streamrec's lazy wrapper)."""
    return store.cluster() if isinstance(store, LazyRedisCluster) else store


def measure(url: str, run_dir: Path, requests: int, runs: int) -> tuple[dict[str, list[list[float]]], int]:
    """Each read kind's latencies (seconds) per run against the Redis at ``url``, and how many of
    the list's items are in the filtered category."""
    settings = Settings(redis_url=url, api_port=free_port(), log_level="WARNING")
    keys = RedisKeys(settings.redis_prefix)
    store = connect(settings, socket_timeout=None, connect_timeout=None)
    items = [(f"item-{i:05d}", 1.0 - i / 100) for i in range(settings.top_n)]
    store.set(
        keys.recs(USER),
        CachedList(items, "20261129T000000.000Z-abcdef", time.time(), "personal").encode(),
    )
    write_catalog(store, keys)
    share = sum(1 for i in range(settings.top_n) if i % CATEGORIES == 0)  # the list's items of c0
    raw = raw_client(store)
    with (
        RecommendationClient(settings=settings) as client,
        api_process(settings, run_dir),
        httpx.Client(base_url=f"http://{settings.api_host}:{settings.api_port}") as http,
    ):
        path = f"/users/{USER}/recommendations?n={settings.top_n}"
        assert http.get(path).status_code == 200

        filtered = client.get(USER, n=share, categories=["c0"])
        assert filtered is not None and filtered.source == "personal" and len(filtered.items) == share
        filled = client.get(USER, n=2 * share, categories=["c0"])
        assert filled is not None and filled.source == "mixed" and len(filled.items) == 2 * share

        reads = {
            "raw": lambda: raw.get(keys.recs(USER)),
            "client": lambda: client.get(USER, n=settings.top_n),
            "filtered": lambda: client.get(USER, n=share, categories=["c0"]),
            "filled": lambda: client.get(USER, n=2 * share, categories=["c0"]),
        }
        samples: dict[str, list[list[float]]] = {kind: [] for kind in LABELS}
        for _ in range(runs):
            _interleaved(reads, 100)  # warm-up
            for kind, timings in _interleaved(reads, requests).items():
                samples[kind].append(timings)
            # Apart: a request wakes the api process, which would slow the reads that follow it.
            samples["http"].append(_interleaved({"http": lambda: http.get(path)}, requests)["http"])
    store.close()
    return samples, share


def run(quick: bool) -> list[Section]:
    """The read-path sections, one per Redis topology: p50/p99 of client and HTTP reads vs raw GET."""
    requests = 200 if quick else 5000
    runs = 1 if quick else RUNS
    sections = []
    for topology in TOPOLOGIES:
        if reason := topology.missing():
            log_progress(f"  read path on a {topology.label}: skipped ({reason})")
            continue
        log_progress(f"  read path on a {topology.label}")
        with tempfile.TemporaryDirectory() as tmp, topology.start(Path(tmp)) as url:
            samples, share = measure(url, Path(tmp), requests, runs)
        sections.append(_section(topology, samples, share, requests, runs, quick))
    return sections


def _section(
    topology: RedisTopology,
    samples: dict[str, list[list[float]]],
    share: int,
    requests: int,
    runs: int,
    quick: bool,
) -> Section:
    targets = {
        ("client", 99): "p99 ≤ 1.5× raw GET",
        ("filtered", 99): "p99 ≤ 2× raw GET",
        ("http", 99): "p99 ≤ 5 ms",
    }
    figures = [
        latency_figure(
            f"{LABELS[kind]} p{q}", samples[kind], "raw GET", samples["raw"], q, targets.get((kind, q), "")
        )
        for kind in LABELS
        if kind != "raw"
        for q in (50, 99)
    ]
    image = latency_cdf(
        {LABELS[kind]: [s * 1000 for run in samples[kind] for s in run] for kind in LABELS},
        image_path(f"{topology.fragment('read-latency-cdf')}.png", quick),
        title=f"Read latency, {topology.label}: {runs} runs of {requests:,} reads pooled",
    )
    title = "Read latency (figure 3)" + ("" if topology is ONE_SERVER else f" — {topology.label}")
    where = {
        ONE_SERVER: "one redis-server",
        CLUSTER: (
            "a Redis Cluster of 6 redis-servers (3 primaries, 3 replicas, `redis-cli --cluster create`); "
            "the raw `GET` is redis-py's `RedisCluster`, which sends it to the key's primary"
        ),
        SENTINEL: (
            "a Sentinel group (1 primary, 1 replica, 3 sentinels); every client reaches the primary "
            "the sentinels name (`redis+sentinel://` URL), the raw `GET` with redis-py's "
            "`Sentinel.master_for` client"
        ),
    }[topology]
    return Section(
        title,
        "python -m bench --only read_path" + (" --quick" if quick else ""),
        figures,
        description=(
            f"On {where}. "
            f"{requests:,} reads per kind and run over loopback, the Redis reads taken in turn (one of "
            "each, then again: noise on the shared machine hits them alike), the HTTP requests after "
            "them: raw `GET` with redis-py, "
            "`RecommendationClient.get(user, n=50)` (GET + decode + the catalog's filter), the same "
            f"with a category filter (`categories=['c0']`, n={share}: the list's items of that category), "
            f"and with a fill (n={2 * share}: the rest from the category's popular list, one more "
            "round trip), and the HTTP endpoint (`streamrec api`, uvicorn, one worker) through an httpx "
            "keep-alive client. The value is a top-50 list as the scorer writes it; the serving catalog "
            f"holds {CATALOG_ITEMS:,} items in {CATEGORIES} categories, 1% of them hidden. The three "
            "topologies run one after the other in the same invocation, each against its own raw `GET`."
        ),
        images=[image],
    )
