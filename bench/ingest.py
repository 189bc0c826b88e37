"""Ingest throughput: one worker against three baselines (figure 1), two workers against one (figure 7).

Each run of figure 1 starts a fresh broker (``BENCH_BROKER``: the embedded one by default, or
Apache Kafka, ``bench/brokers.py``) and Redis, fills ``interactions`` (4 partitions, keyed by
user_id) with synthetic events, then drains it with four readers in turn:

- a bare confluent-kafka consumer that only JSON-decodes every message;
- an empty Faust agent on raw bytes (stock Faust, fetch wait shortened): Faust's per-message floor;
- a Quix Streams app doing ingest's per-user work (RocksDB state with changelogs, one features
  message per event), in its own venv (``.venv-quix``, see ``bench/ingest_baselines.py``);
- ``streamrec ingest`` (validation, re-key, features with RocksDB tables and changelogs,
  popularity).

The Quix app and ``streamrec ingest`` are timed alike on their output (``bench/drain_clock.py``):
the whole drain from the first output to the last, and its steady part (10% to 90% of the
output). The two floors are timed from their first message to the last
(``bench/ingest_baselines.py``).

Figure 7 drains the same topic, on a broker of its own, with two ingest workers.

``BENCH_INGEST_EVENTS`` sets the number of events (default 200,000 over 10,000 users; quick mode
20,000 over 2,000).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.brokers import BrokerChoice, chosen
from bench.drain_clock import DrainClock, DrainRates, time_output
from bench.harness import RUNS, Figure, Section, image_path, log_progress
from bench.ingest_baselines import bare_confluent_rate, empty_faust_rate, quix_python, quix_rates
from bench.plots import throughput_bars
from bench.stack import filled_broker, start_ingest_workers
from streamrec.shared.kafka_config import client_config
from streamrec.shared.messages import feature_batch_event_count
from streamrec.shared.settings import Settings
from streamrec.synthetic import generate

PARTITIONS = 4
EVENTS_PER_USER = 10  # when only the number of events is given
DEFAULT_EVENTS = 200_000  # over USERS users: the comparison with Quix Streams
USERS = 10_000
# Quick mode's size. A worker's fetch takes up to STREAMREC_INGEST_BATCH_MAX (10,000) records and
# its features leave when each partition's run is folded: two workers draining 20,000 events sent
# their whole output in two bursts, which the output reads could not tell apart (nothing to time).
# 60,000 gives each of two workers three fetches, a few tenths of a second apart.
QUICK_EVENTS = 60_000
QUICK_USERS = 2_000
QUIX = "Quix Streams app, same per-user work"
FAUST = "empty Faust agent on raw bytes (Faust's per-message floor)"
BARE = "bare confluent-kafka consumer (JSON decode)"


def _ingest_rates(settings: Settings, run_dir: Path, expected: int, workers: int = 1) -> DrainRates:
    """Events/s of ``workers`` ingest workers draining the topic together, whole and steady.

    Counted on the output (the accepted events the user-features messages carry) by
    :func:`bench.drain_clock.time_output`, exactly as the Quix Streams app is: from the first
    output to the last, and between 10% and 90% of it.
    """
    topic = settings.topic_user_features
    output = Consumer(client_config(settings, {"group.id": "bench", "fetch.wait.max.ms": 50}))
    output.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    started = start_ingest_workers(settings, run_dir, workers)

    def stopped(_clock: DrainClock) -> str | None:
        dead = [worker for worker in started if not worker.alive()]
        return f"{dead[0].name} exited; log:\n{dead[0].log_tail()}" if dead else None

    try:
        clock = time_output(
            output,
            expected,
            lambda message: feature_batch_event_count(message.value() or b""),
            stopped,
            deadline=time.monotonic() + 180 + expected / 50,
        )
        return clock.rates()
    finally:
        output.close()
        for worker in started:
            worker.stop()


def synthetic_events(n_events: int, users: int | None = None) -> pd.DataFrame:
    """Exactly ``n_events`` synthetic events over ``users`` users (default ``n_events // 10``, at
    least 10), in time order.

    The catalogue is a fifth the size of the users. The generator skips a user's repeated items,
    so it gives fewer events than it plans: it plans 8–16 per user (more if still short) and each
    user keeps their earliest events, one round of ranks after another, until ``n_events`` are
    taken; so every user is in (their first event is taken first) with about as many events each.
    """
    users = users or max(10, n_events // EVENTS_PER_USER)
    items, low = max(200, users // 5), max(8, n_events // users)
    frame = generate(users=users, items=items, events_per_user=(low, 2 * low), seed=5)
    while len(frame) < n_events:  # too many repeated items (a small catalogue): plan more
        low *= 2
        frame = generate(users=users, items=items, events_per_user=(low, 2 * low), seed=5)
    rank = frame.groupby("user_id", sort=False).cumcount()  # 0 for a user's first event, …
    taken = frame.assign(rank=rank).sort_values(["rank", "timestamp"], kind="mergesort").head(n_events)
    taken = taken.sort_values("timestamp", kind="mergesort").drop(columns="rank").reset_index(drop=True)
    taken["row"] = range(len(taken))  # event ids (source + row) stay 0..n-1, as the generator's
    return taken


def run(quick: bool) -> list[Section]:
    """The ingest sections: one worker against three baselines (figure 1), two workers against one (figure 7)."""
    # Over 80 lines: most of it is the sections' description text.
    n_events = QUICK_EVENTS if quick else int(os.environ.get("BENCH_INGEST_EVENTS", str(DEFAULT_EVENTS)))
    events = synthetic_events(n_events, QUICK_USERS if quick else USERS)
    users = events["user_id"].nunique()
    choice = chosen()
    quix_python()  # installs .venv-quix on first use, before any broker runs or clock starts
    one_worker: list[DrainRates] = []
    two_workers: list[DrainRates] = []
    quix: list[DrainRates] = []
    baselines: dict[str, list[float]] = {FAUST: [], BARE: []}
    measures = {BARE: bare_confluent_rate, FAUST: empty_faust_rate}
    for n in range(1 if quick else RUNS):
        # A broker of its own for each run: the same topic, filled once, for every reader of the run.
        with filled_broker(events, PARTITIONS, choice) as (settings, run_dir, sent):
            # One after another, so that none shares the cores with another.
            for name, measure in measures.items():
                log_progress(f"  ingest run {n + 1}: {name}…")
                baselines[name].append(measure(settings, settings.topic_interactions, sent))
            log_progress(f"  ingest run {n + 1}: {QUIX}…")
            quix.append(quix_rates(settings, settings.topic_interactions, sent))
            log_progress(f"  ingest run {n + 1}: one worker…")
            one_worker.append(_ingest_rates(settings, run_dir, sent))
        log_progress(f"  ingest run {n + 1}: two workers…")
        with filled_broker(events, PARTITIONS, choice) as (settings, run_dir, sent):
            two_workers.append(_ingest_rates(settings, run_dir, sent, workers=2))
    command = (
        choice.env
        + ("" if quick or n_events == DEFAULT_EVENTS else f"BENCH_INGEST_EVENTS={n_events} ")
        + "python -m bench --only ingest"
        + (" --quick" if quick else "")
    )
    workload = f"{n_events:,} synthetic events over {users:,} users, {PARTITIONS} partitions"
    return [
        _throughput_section(choice, command, workload, one_worker, quix, baselines, quick),
        _scale_out_section(choice, command, workload, one_worker, two_workers, quick),
    ]


def _whole(rates: list[DrainRates]) -> list[float]:
    return [r.whole for r in rates]


def _steady(rates: list[DrainRates]) -> list[float]:
    return [r.steady for r in rates]


def _throughput_section(
    choice: BrokerChoice,
    command: str,
    workload: str,
    one_worker: list[DrainRates],
    quix: list[DrainRates],
    baselines: dict[str, list[float]],
    quick: bool,
) -> Section:
    """Figure 1: one worker against Quix Streams (whole drain and steady part) and two floors."""
    worker = f"one ingest worker, {workload}"
    target = "≥ 1.0× Quix Streams"
    against = [
        Figure(
            f"{worker}: whole drain",
            "events/s",
            _whole(one_worker),
            f"{QUIX}: whole drain",
            _whole(quix),
            target,
        ),
        Figure(
            f"{worker}: steady 10%–90%",
            "events/s",
            _steady(one_worker),
            f"{QUIX}: steady 10%–90%",
            _steady(quix),
            target,
        ),
        Figure(f"{worker}: whole drain", "events/s", _whole(one_worker), FAUST, baselines[FAUST]),
        Figure(f"{worker}: whole drain", "events/s", _whole(one_worker), BARE, baselines[BARE]),
    ]
    own = [
        Figure(f"{QUIX}: whole drain", "events/s", _whole(quix)),
        Figure(f"{QUIX}: steady 10%–90%", "events/s", _steady(quix)),
        *(Figure(name, "events/s", runs) for name, runs in baselines.items()),
    ]
    # One bar pair per baseline, named by it.
    bars = [
        Figure(fig.baseline_name or "", fig.unit, fig.runs, fig.baseline_name, fig.baseline_runs)
        for fig in against
    ]
    on = "" if choice.embedded else f" — {choice.label}"
    return Section(
        f"Ingest throughput per worker (figure 1){on}",
        command,
        [*against, *own],
        description=(
            f"A pre-filled `interactions` topic ({workload}, keyed by user_id) on the {choice.label}, "
            "a fresh one for each run, drained in each run by four readers one after another (none "
            "shares the cores with another):\n\n"
            "- **one ingest worker**: `streamrec ingest` with validation, the home rule (events keyed by user "
            "are folded where they land, as all of these are), per-user features (last 200 items, last "
            "1,000 event ids for de-duplication, event count) in RocksDB tables with changelogs, and "
            "popularity.\n"
            f"- **{QUIX}**: a Quix Streams 3.28.1 application with the same per-user state in "
            "RocksDB with changelogs and one features message per event, but no validation, "
            "re-key (the input is keyed by user already) or popularity. Quix checkpoints (commits "
            "offsets, flushes state to RocksDB and its changelog) every 5 s by default, left as "
            "is. It runs in a venv of its own, `.venv-quix`, created from "
            "`bench/quix-requirements.txt` on first use: Quix Streams caps confluent-kafka < 2.13 "
            "and pydantic < 2.14, below streamrec's pins, so it cannot share streamrec's.\n"
            f"- **{FAUST}**: stock Faust, with only the fetch wait shortened to 50 ms, and an "
            "agent that counts raw values: what Faust costs per message before any work, the "
            "floor of the path ingest is built on.\n"
            f"- **{BARE}**: all partitions assigned, each value `orjson.loads`ed, nothing else.\n\n"
            "The worker and the Quix app are timed alike, on their output topic by the benchmark's "
            "own consumer (`bench/drain_clock.py`; for the worker, the accepted events its "
            "user-features messages carry): the **whole drain** from the first output to the last "
            "(start-up before the first output left out, everything after it in), and its **steady** "
            "part, between 10% and 90% of the output. The two floors are timed from their first "
            "message to the last. Where the worker's time goes: the profile section below."
        ),
        images=[
            throughput_bars(
                bars,
                image_path(f"{choice.fragment('ingest-throughput')}.png", quick),
                title=f"One ingest worker (measured) against each baseline ({choice.label})",
            )
        ],
    )


def _scale_out_section(
    choice: BrokerChoice,
    command: str,
    workload: str,
    one_worker: list[DrainRates],
    two_workers: list[DrainRates],
    quick: bool,
) -> Section:
    """Figure 7: two workers of one group against one."""
    one = "one ingest worker (figure 1's runs)"
    figures = [
        Figure(
            f"two ingest workers, {workload}: whole drain",
            "events/s",
            _whole(two_workers),
            f"{one}: whole drain",
            _whole(one_worker),
        ),
        Figure(
            f"two ingest workers, {workload}: steady 10%–90%",
            "events/s",
            _steady(two_workers),
            f"{one}: steady 10%–90%",
            _steady(one_worker),
        ),
    ]
    on = "" if choice.embedded else f" — {choice.label}"
    return Section(
        f"Ingest scale-out: two workers against one (figure 7){on}",
        command,
        figures,
        description=(
            "The same pre-filled topic drained by two workers of one group, each with its own "
            "RocksDB, timed on the output as in figure 1 (the whole drain includes the rebalance "
            "when the second worker joins). All processes (both workers, the broker, Redis and the "
            "benchmark's own consumer) share the machine's cores, so the ratio is what two workers "
            "add on one machine, not on two."
        ),
        images=[
            throughput_bars(
                figures[:1],
                image_path(f"{choice.fragment('ingest-scale-out')}.png", quick),
                title=f"Two ingest workers against one ({choice.label})",
            )
        ],
    )
