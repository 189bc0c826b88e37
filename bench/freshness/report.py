"""The freshness benchmark's part of the results page: figures 2, 8 and 9 from the runs' results."""

from __future__ import annotations

import os

from bench.brokers import BrokerChoice
from bench.freshness.drain import DrainResult
from bench.freshness.measured_run import RunResult
from bench.freshness.sizes import PARTITIONS, PRODUCER_LINGER_MS, TRAIN_EPOCHS, DrainSize, Size, size_defaults
from bench.harness import Figure, Section, image_path, percentile
from bench.plots import latency_cdf
from streamrec.shared.settings import Settings


def sections(
    size: Size,
    drain_size: DrainSize,
    settings: Settings,
    choice: BrokerChoice,
    results: list[RunResult],
    drains: list[DrainResult],
    quick: bool,
) -> list[Section]:
    """The freshness sections: figure 2 (with its CDF plot), figure 8 and figure 9, on ``choice``."""
    images = [
        latency_cdf(
            {
                "one produce→consume hop (baseline)": [ms for r in results for ms in r.baseline_ms],
                "publish → features built": [t[0] for r in results for t in r.trace],
                "publish → list in Redis": [ms for r in results for ms in r.tracker.latencies_ms()],
            },
            image_path(f"{choice.fragment('freshness-cdf')}.png", quick),
            title=f"Freshness at {size.rate:,.0f} events/s, {size.runs} runs pooled ({choice.label})",
        )
    ]
    command = choice.env + command_line(size, quick)
    on = "" if choice.embedded else f" — {choice.label}"
    return [
        Section(
            f"Freshness (figure 2){on}",
            command,
            _freshness_figures(size, results, choice),
            description=_description(size, settings, choice),
            images=images,
        ),
        Section(
            f"Broker cost per event (figure 8){on}",
            command,
            _broker_figures(size, results),
            description=(
                "Measured during figure 2's runs: the record batches and records streamrec's services "
                "wrote to the broker per event published (every topic but the input, changelogs "
                "included; counted by reading each partition's raw fetch responses before and after a "
                "run, `bench/broker_cost.py`), and the broker's CPU time per 1,000 events. The "
                "baseline for batches is what the benchmark's own producer wrote to the input topic "
                f"(linger {PRODUCER_LINGER_MS} ms); for CPU, the one-hop baseline (the same producer at "
                "the same rate, one consumer, nothing else). The embedded broker's request cost grows "
                "with the record batches a partition holds (`python -m bench --only broker`)."
            ),
        ),
        Section(
            f"End-to-end drain (figure 9){on}",
            command,
            _drain_figures(drains, drain_size),
            description=(
                f"On figure 2's stack after its runs (model served): a burst of {drain_size.events:,} "
                f"events over {drain_size.users:,} users, published with `streamrec`'s Publisher as fast "
                "as it goes, timed from the first send to the last list written in Redis (the latest "
                "`generated_at` of those users' lists once the scorer committed every event). The "
                "baseline publishes the same burst to a topic of its own: how fast the events can be "
                "sent at all."
            ),
        ),
    ]


def _broker_figures(size: Size, results: list[RunResult]) -> list[Figure]:
    events = [size.events for _ in results]
    per_event = [r.written[0] / n for r, n in zip(results, events, strict=True)]
    input_per_event = [r.input_written[0] / n for r, n in zip(results, events, strict=True)]
    cpu = [1000 * r.broker_cpu_seconds / n for r, n in zip(results, events, strict=True)]
    baseline_cpu = [1000 * r.baseline_broker_cpu_seconds / r.baseline_events for r in results]
    return [
        Figure(
            "record batches streamrec writes per event",
            "batches",
            per_event,
            "the producer's batches on the input topic, per event",
            input_per_event,
            target="≤ 0.1",
        ),
        Figure(
            "messages streamrec writes per event",
            "messages",
            [r.written[1] / n for r, n in zip(results, events, strict=True)],
        ),
        Figure(
            "broker CPU per 1,000 events",
            "core-seconds",
            cpu,
            "one produce→consume hop, per 1,000 events",
            baseline_cpu,
            target="≤ 0.5",
        ),
    ]


def _drain_figures(drains: list[DrainResult], size: DrainSize) -> list[Figure]:
    return [
        Figure(
            f"burst of {size.events:,} events over {size.users:,} users → lists in Redis",
            "events/s",
            [d.rate for d in drains],
            "publishing the burst alone",
            [d.publish_rate for d in drains],
            target="≥ 5,000 events/s",
        )
    ]


# p50 and p99 targets of publish → list in Redis at 1,000 events/s, per broker (nodes -> targets).
FRESHNESS_TARGETS: dict[int, dict[float, str]] = {
    0: {50: "≤ 150 ms", 99: "≤ 500 ms"},  # the embedded broker
    1: {50: "≤ 100 ms", 99: "≤ 300 ms"},  # one Apache Kafka broker
    3: {50: "≤ 100 ms", 99: "≤ 500 ms"},  # three, topics at replication factor 3
}


def _freshness_figures(size: Size, results: list[RunResult], choice: BrokerChoice) -> list[Figure]:
    fresh = [r.tracker.latencies_ms() for r in results]
    base = [r.baseline_ms for r in results]
    targets = FRESHNESS_TARGETS.get(choice.nodes, {})
    figures = [
        Figure(
            f"publish → list in Redis, p{q}",
            "ms",
            [percentile(run, q) for run in fresh],
            "one produce→consume hop",
            [percentile(run, q) for run in base],
            target=targets.get(q, ""),
        )
        for q in (50, 99, 99.9)
    ]
    steps = ("publish → features built by ingest", "features built → list in Redis")
    for step, name in enumerate(steps):
        per_run = [[t[step] - (t[step - 1] if step else 0.0) for t in r.trace] for r in results]
        for q in (50, 99):
            figures.append(
                Figure(f"{name}, p{q}", "ms", [percentile(run, q) if run else 0.0 for run in per_run])
            )
    counts = [
        ("events measured per run", [len(r.tracker.updated_at) for r in results], ""),
        ("events without an update", [r.missing for r in results], "0"),
        (
            "events not measured: their user had another one in flight",
            [r.tracker.overlapped for r in results],
            "0",
        ),
        ("list rewrites with no event in flight", [r.tracker.unsolicited for r in results], "0"),
    ]
    figures += [
        Figure(name, "events", [float(v) for v in values], target=target) for name, values, target in counts
    ]
    figures += [
        Figure(
            "producer rate achieved",
            "events/s",
            [r.publish_rate for r in results],
            target=f"{size.rate:,.0f} events/s",
        ),
        Figure(
            "lists from the served model after the run",
            "%",
            [r.personal_share for r in results],
            target="100 %",
        ),
    ]
    figures += [
        Figure(f"CPU of {name} while publishing", "% of a core", [r.cpu[name] for r in results])
        for name in results[0].cpu
    ]
    figures.append(
        Figure(
            "CPU the host stole (other guests) while publishing",
            "% of a core",
            [r.stolen_cpu for r in results],
        )
    )
    return figures


def command_line(size: Size, quick: bool, benchmark: str = "freshness") -> str:
    """The command that reproduces ``benchmark``'s figures at ``size``, with the settings that differ."""
    if quick:
        return f"python -m bench --only {benchmark} --quick"
    default = size_defaults()
    env = [
        f"{variable}={value:g}"
        for variable, value, base in (
            ("BENCH_FRESHNESS_RATE", size.rate, default.rate),
            ("BENCH_FRESHNESS_SECONDS", size.seconds, default.seconds),
            ("BENCH_FRESHNESS_USERS", size.users, default.users),
            ("BENCH_FRESHNESS_LINGER_MS", PRODUCER_LINGER_MS, 50),
        )
        if value != base
    ]
    knobs = [f"{name}={value}" for name, value in sorted(os.environ.items()) if name.startswith("STREAMREC_")]
    return " ".join([*env, *knobs, f"python -m bench --only {benchmark}"])


def _description(size: Size, settings: Settings, choice: BrokerChoice) -> str:
    broker_label = choice.label
    warm_up = (
        f" Before the measured runs, {choice.warm_up_runs} runs the same are made and discarded: a JVM "
        "broker compiles its hot paths as it runs (`bench/brokers.py`)."
        if choice.warm_up_runs
        else ""
    )
    replicated = (
        f", topics at replication factor {settings.replication_factor} (min.insync.replicas 2)"
        if settings.replication_factor > 1
        else ""
    )
    return (
        f"{size.runs} run{'s' if size.runs > 1 else ''} on one stack ({broker_label}{replicated}, embedded "
        f"Redis, one ingest worker, one scorer, {PARTITIONS} partitions). Warm-up: a synthetic stream over {size.users:,} users, one SASRec model "
        f"trained ({TRAIN_EPOCHS} epochs) and served, every list from it.{warm_up} Each run publishes {size.events:,} "
        f"events at {size.rate:,.0f}/s ({size.seconds:g} s), cycling over the users (one event per user every "
        f"{size.users / size.rate:g} s), with a paced confluent-kafka producer (the Publisher's client, linger {PRODUCER_LINGER_MS} ms), and "
        "times each user's next list rewrite from Redis keyspace notifications. The baseline is the same "
        f"producer at the same rate for {size.baseline_seconds:g} s on a topic of its own, read by one consumer "
        "with the stack's fetch wait. The per-step rows come from the pipeline's own timestamps (`updated_at` "
        "of the user-features batch that carried the event). Knobs: "
        f"`STREAMREC_KAFKA_FETCH_WAIT_MS={settings.kafka_fetch_wait_ms}`, "
        f"`STREAMREC_SCORER_BATCH_SIZE={settings.scorer_batch_size}`, "
        f"`STREAMREC_SCORER_BATCH_WAIT_MS={settings.scorer_batch_wait_ms}`; what each costs is in "
        "[latency-tuning.md](latency-tuning.md)."
    )
