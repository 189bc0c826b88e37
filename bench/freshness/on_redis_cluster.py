"""Figure 2 with the lists on a Redis Cluster, against the same measurement on one redis-server.

Two stacks run side by side, identical but for their Redis: one on a redis-server, one on a Redis
Cluster of 6 nodes (3 primaries, 3 replicas), each with a broker of its own (``BENCH_BROKER``).
Both are warmed up as figure 2's stack is (a history per user, one model trained and served,
every list from it); then their runs alternate (one Redis, the cluster, one Redis, ...), so noise
on the shared machine hits both alike and the ratio of their p99s holds. While one stack is
measured the other idles. Each run is figure 2's (``measured_run.py``).
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.brokers import broker, chosen
from bench.freshness.measured_run import RunResult, measure_run
from bench.freshness.report import command_line
from bench.freshness.sizes import PARTITIONS, chosen_size
from bench.freshness.warm_up import warm_up
from bench.harness import Figure, Section, log_progress, percentile
from bench.redis_topologies import CLUSTER, ONE_SERVER
from bench.stack import running_stack
from streamrec.processes import StackError

__all__ = ["run"]

TOPOLOGIES = (ONE_SERVER, CLUSTER)


def run(quick: bool) -> list[Section]:
    """The section: publish → list in Redis with the lists on a cluster, against one redis-server."""
    if reason := CLUSTER.missing():
        log_progress(f"  freshness on a Redis Cluster: skipped ({reason})")
        return []
    size = chosen_size(quick)
    choice = chosen()
    results: dict[str, list[RunResult]] = {topology.name: [] for topology in TOPOLOGIES}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as opened:
        measured = []
        for topology in TOPOLOGIES:
            run_dir = Path(tmp) / topology.name
            run_dir.mkdir()
            log_progress(f"  stack with its lists on {topology.label}")
            kafka = opened.enter_context(broker(run_dir, choice))
            redis_url = opened.enter_context(topology.start(run_dir))
            stack = opened.enter_context(
                running_stack(
                    run_dir, partitions=PARTITIONS, metrics_port=0, redis_url=redis_url, **kafka.overrides
                )
            )
            measured.append((topology, stack, kafka, warm_up(stack, size)))
        for n in range(choice.warm_up_runs + size.runs):
            for topology, stack, kafka, (users, items, version) in measured:
                log_progress(f"  {topology.label}:")
                result = measure_run(stack, size, n, users, items, version, kafka)
                if n >= choice.warm_up_runs:
                    results[topology.name].append(result)
    if not all(r.tracker.updated_at for runs in results.values() for r in runs):
        raise StackError("a run saw no list updated at all: is the scorer writing to Redis?")
    command = choice.env + command_line(size, quick, "freshness_redis_cluster")
    on = "" if choice.embedded else f", {choice.label}"
    return [
        Section(
            f"Freshness with the lists on a Redis Cluster (figure 2){on}",
            command,
            _figures(results[CLUSTER.name], results[ONE_SERVER.name]),
            description=(
                f"Two stacks, identical but for their Redis ({choice.label}, one ingest worker, one scorer, "
                f"{PARTITIONS} partitions, a broker each): one writes its lists to one redis-server, the "
                "other to a Redis Cluster of 6 nodes (3 primaries, 3 replicas; `STREAMREC_REDIS_URL="
                "redis+cluster://…`). Each is warmed up and measured as figure 2's stack is: "
                f"{size.events:,} events at {size.rate:,.0f}/s over {size.users:,} users per run, each "
                "user's next list rewrite timed from keyspace notifications (on every primary of the "
                f"cluster). Their {size.runs} runs alternate, one Redis then the cluster, so the "
                "machine's noise hits both alike; the baseline column is the one-redis-server stack."
            ),
        )
    ]


def _scorer_cpu(result: RunResult) -> float:
    return sum(cpu for name, cpu in result.cpu.items() if name.startswith("scorer"))


def _figures(cluster: list[RunResult], one: list[RunResult]) -> list[Figure]:
    figures = [
        Figure(
            f"publish → list in Redis Cluster, p{q}",
            "ms",
            [percentile(r.tracker.latencies_ms(), q) for r in cluster],
            "one redis-server",
            [percentile(r.tracker.latencies_ms(), q) for r in one],
            target="p99 ≤ 1.2× one redis-server" if q == 99 else "",
        )
        for q in (50, 99)
    ]
    figures.append(
        Figure(
            "CPU of the scorer while publishing, cluster",
            "% of a core",
            [_scorer_cpu(r) for r in cluster],
            "one redis-server",
            [_scorer_cpu(r) for r in one],
        )
    )
    for label, runs in (("cluster", cluster), ("one redis-server", one)):
        figures += [
            Figure(
                f"events without an update, {label}", "events", [float(r.missing) for r in runs], target="0"
            ),
            Figure(
                f"lists from the served model after the run, {label}",
                "%",
                [r.personal_share for r in runs],
                target="100 %",
            ),
        ]
    return figures
