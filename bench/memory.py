"""Memory at scale: each process's RSS over a long replay, and Redis bytes per user (figure 6).

Each run starts the embedded stack (broker, Redis, ``streamrec ingest`` and ``streamrec scorer`` as
real processes, top-N 50) and then

1. streams the first 5% of a synthetic stream in and trains one model on it with
   ``streamrec train --once`` (few epochs: the model has to be served, not to be good; promoted by
   hand if the quality gate refuses it), and waits until the scorer serves it;
2. replays the other 95% at full speed while sampling every process's RSS (``VmRSS``), against
   the events each has processed: ingest's output messages for ingest, broker and Redis; the
   scorer's committed offsets for the scorer. It ends when the scorer has caught up;
3. measures what the users' lists cost in Redis: ``MEMORY USAGE`` of a sample of the keys the
   scorer wrote (top-50 lists only), and the same lists written again to another database of the
   same Redis in the old JSON format (the baseline) and with other id styles, where
   ``INFO memory`` used_memory before and after writing all of them, per user, cross-checks it.

The trainer service does not run during the replay (a batch job, its memory is bounded by
``STREAMREC_TRAIN_WINDOW_EVENTS``, not by the stream); the one training's peak RSS is reported.
``BENCH_MEMORY_EVENTS`` sets the number of events (default 1,000,000 over 100,000 users and
20,000 items; users and items scale with it), ``BENCH_MEMORY_RUNS`` the runs (default 3); quick
mode is 3,000 events in one run.

``BENCH_BROKER=kafka`` (or ``kafka3``) runs it on Apache Kafka brokers started for the run
(``bench/brokers.py``) instead of the embedded broker; the broker row is then their RSS summed.
A process's RSS is flat when its mean over the last quarter of the replay is at most 1.1× its
mean over the second quarter: the first quarter is the warm-up (caches and tables filling).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import redis

from bench.brokers import BrokerChoice, broker, chosen
from bench.harness import FRAGMENTS, RUNS, Figure, Section, log_progress
from bench.procfs import memory_kib
from bench.progress import PipelineProgress
from bench.stack import check_alive, feed, publish_events, read_lists, running_stack, serve_model
from streamrec.processes import StackError
from streamrec.shared.cached_list import CachedList
from streamrec.shared.redis_connection import connect
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.stack import Stack
from streamrec.synthetic import generate

DEFAULT_EVENTS = 1_000_000
TOP_N = 50  # the list length the budget is about
TRAIN_FRACTION = 0.05  # of the events, streamed and trained on before the replay
SAMPLE_SECONDS = 1.0  # between RSS samples
STALL_SECONDS = 300.0  # no progress at all for this long: fail with the logs
MEMORY_USAGE_KEYS = 2_000  # keys sampled for MEMORY USAGE
BUDGET = "≤ 500 bytes"
# Said of a published run smaller than DEFAULT_EVENTS.
BELOW_FULL_SIZE = "Smaller than the full size (1,000,000 events over 100,000 users): `BENCH_MEMORY_EVENTS`. "
PLOTTED = ("ingest", "scorer", "broker", "redis")
FLAT = "flat: ≤ 1.1× second quarter"


def plot_path(choice: BrokerChoice) -> Path:
    """Figure 6's image for the broker it ran on."""
    return FRAGMENTS / f"{choice.fragment('memory-rss')}.png"


@dataclass
class Sample:
    """One RSS reading of every process, with how far each had got."""

    ingested: int  # events ingest has processed in the replay (its output messages)
    scored: int  # of them, the scorer's committed messages
    rss_mib: dict[str, float]


@dataclass
class RunResult:
    """What one run measured."""

    samples: list[Sample] = field(default_factory=list)
    train_peak_mib: float = 0.0
    # (variant, format) -> (MEMORY USAGE mean per key, used_memory delta per user), in bytes
    redis_bytes: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    users: int = 0  # users with a top-50 list
    personal: int = 0  # of them, lists from the model


# --- one run ----------------------------------------------------------------------------------


def _train_once_cli(settings: Settings, epochs: int, timeout: float) -> float:
    """Run ``streamrec train --once`` (a process of its own, as an operator would) and return its
    peak RSS (MiB, sampled VmHWM)."""
    args = ["train", "--once"]
    env = {**os.environ, **settings.as_env(), "STREAMREC_EPOCHS": str(epochs), "STREAMREC_METRICS_PORT": "0"}
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "streamrec", *args], env=env, stdout=output, stderr=subprocess.STDOUT
        )
        peak, deadline = 0.0, time.monotonic() + timeout
        while child.poll() is None:
            peak = max(peak, memory_kib(child.pid, "VmHWM"))
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                raise StackError(f"`streamrec {' '.join(args)}` did not finish in {timeout:.0f}s")
            time.sleep(0.2)
        output.seek(0)
        text = output.read().decode(errors="replace")
    if child.returncode != 0:
        raise StackError(f"`streamrec {' '.join(args)}` failed ({child.returncode}):\n{text[-3000:]}")
    return peak / 1024


def _train_and_serve(stack: Stack, sample: pd.DataFrame, epochs: int) -> float:
    """Stream ``sample`` in, train one model on it, wait until the scorer serves it; peak RSS (MiB)."""
    settings = stack.settings
    feed(stack, sample, "bench-train", STALL_SECONDS, through_scorer=True)
    peak = _train_once_cli(settings, epochs, timeout=3600)
    registry = ModelRegistry(settings.model_dir)  # type: ignore[arg-type]  # set by Settings
    # The gate may refuse it: this benchmark needs a served model, not a good one.
    version = registry.promoted_version() or registry.newest_version()
    assert version is not None, "train --once published nothing"
    serve_model(stack, version, "memory benchmark")
    return peak


def _replay(
    stack: Stack, events: pd.DataFrame, progress: PipelineProgress, label: str, brokers: dict[str, int]
) -> list[Sample]:
    """Publish ``events`` (in a thread) and sample RSS until the scorer has processed all of them;
    ``brokers`` (name -> PID, Apache Kafka's) are sampled as one "broker", summed."""
    expected = len(events)
    base_ingested, base_scored = progress.update()
    failure: list[BaseException] = []

    def publish() -> None:
        try:
            publish_events(stack.settings, events, "bench")
        except BaseException as exc:  # reported by the sampling loop
            failure.append(exc)

    publisher = threading.Thread(target=publish, name="bench-memory-publish", daemon=True)
    publisher.start()
    samples: list[Sample] = []
    last_change, last_state, next_report = time.monotonic(), (-1, -1), 0.0
    while True:
        processes = stack.processes()
        check_alive(stack)
        if failure:
            raise StackError(f"publishing the replay failed: {failure[0]!r}")
        ingested, scored = progress.update()
        state = (ingested - base_ingested, scored - base_scored)
        rss = {name: memory_kib(child.pid, "VmRSS") / 1024 for name, child in processes.items()}
        if brokers:
            rss["broker"] = sum(memory_kib(pid, "VmRSS") / 1024 for pid in brokers.values())
        samples.append(Sample(state[0], state[1], rss))
        now = time.monotonic()
        if now >= next_report:
            next_report = now + 10
            memory = ", ".join(f"{name} {mib:,.0f}" for name, mib in rss.items())
            log_progress(
                f"  {label}: ingested {state[0]:,}/{expected:,}, scored {state[1]:,}; RSS MiB: {memory}"
            )
        if state[0] >= expected and state[1] >= expected:
            return samples
        if state != last_state:
            last_change, last_state = now, state
        elif now - last_change > STALL_SECONDS:
            raise StackError(
                f"no progress for {STALL_SECONDS:.0f}s: ingested {state[0]:,}, scored {state[1]:,} of "
                f"{expected:,}; logs in {stack.run_dir}"
            )
        time.sleep(SAMPLE_SECONDS)


def _variants(item_prefix: str) -> dict[str, Callable[[str], str]]:
    """Id styles measured, from the synthetic ids ("i123")."""

    def number(item: str) -> int:
        return int(item.removeprefix(item_prefix))

    return {
        "i12345": lambda item: item,  # as the scorer wrote them
        "12345": lambda item: str(number(item)),  # MovieLens-style numeric ids below 65,536
        "123450": lambda item: str(number(item) * 10),  # ... up to ~200,000 (ml-latest's range)
        "uuid": lambda item: str(uuid.uuid5(uuid.NAMESPACE_OID, item)),  # 36 characters of text
    }


def _redis_bytes(settings: Settings, users: list[str], result: RunResult, item_prefix: str) -> None:
    """MEMORY USAGE and used_memory per user of the top-50 lists, per id style and format."""
    keys = RedisKeys(settings.redis_prefix)
    lists = {
        keys.recs(user): cached
        for user, cached in read_lists(settings, users).items()
        if len(cached.items) == TOP_N
    }
    if not lists:
        raise StackError("no user has a top-50 list in Redis")
    result.users = len(lists)
    result.personal = sum(1 for cached in lists.values() if cached.source == "personal")
    sample = sorted(lists)[:: max(1, len(lists) // MEMORY_USAGE_KEYS)][:MEMORY_USAGE_KEYS]

    def memory_usage(connection: redis.Redis) -> float:
        pipe = connection.pipeline(transaction=False)
        for key in sample:
            pipe.memory_usage(key, samples=0)
        return statistics.fmean(pipe.execute())

    store = connect(settings, socket_timeout=None, connect_timeout=None)
    spare = urlsplit(settings.redis_url or "")._replace(path="/1")  # same server, an empty database
    scratch = connect(settings, url=urlunsplit(spare), socket_timeout=None, connect_timeout=None)
    scratch.flushdb()
    for variant, rename in _variants(item_prefix).items():
        renamed = {
            key: CachedList(
                [(rename(item), s) for item, s in c.items], c.model_version, c.generated_at, c.source
            )
            for key, c in lists.items()
        }
        for value_format in ("binary", "json"):
            before = scratch.info("memory")["used_memory"]
            pipe = scratch.pipeline(transaction=False)
            for key, cached in renamed.items():
                pipe.set(key, cached.encode(value_format))  # type: ignore[arg-type]
            pipe.execute()
            delta = (scratch.info("memory")["used_memory"] - before) / len(renamed)
            result.redis_bytes[(variant, value_format)] = (memory_usage(scratch), delta)
            scratch.flushdb()
    # The keys the scorer itself wrote must cost what their re-encoding does (same bytes).
    result.redis_bytes[("scorer", "binary")] = (memory_usage(store), 0.0)
    scratch.close()
    store.close()


def _one_run(
    events: pd.DataFrame, train_rows: int, run_dir: Path, epochs: int, label: str, choice: BrokerChoice
) -> RunResult:
    result = RunResult()
    with (
        broker(run_dir, choice) as kafka,
        running_stack(run_dir, partitions=4, top_n=TOP_N, **kafka.overrides) as stack,
    ):
        log_progress(f"  {label}: training on the first {train_rows:,} events")
        result.train_peak_mib = _train_and_serve(stack, events.iloc[:train_rows], epochs)
        progress = PipelineProgress(stack.settings)
        try:
            result.samples = _replay(stack, events.iloc[train_rows:], progress, label, kafka.pids())
        finally:
            progress.close()
        users = sorted(events.user_id.unique())
        _redis_bytes(stack.settings, users, result, item_prefix="i")
    return result


# --- figures ----------------------------------------------------------------------------------


def _done(sample: Sample, name: str) -> int:
    return sample.scored if name.startswith("scorer") else sample.ingested


def _rss_at(samples: list[Sample], name: str, total: int, fraction: float) -> float:
    """RSS at the first sample where ``name`` had processed ``fraction`` of the events."""
    target = fraction * total
    return next((s.rss_mib[name] for s in samples if _done(s, name) >= target), samples[-1].rss_mib[name])


def _quarter_mean(samples: list[Sample], name: str, total: int, quarter: int) -> float:
    """Mean RSS over the samples taken while ``name`` was in the given quarter (0-3) of the events."""
    low, high = quarter * total / 4, (quarter + 1) * total / 4
    inside = [
        s.rss_mib[name]
        for s in samples
        if low <= _done(s, name) < high or (quarter == 3 and _done(s, name) >= high)
    ]
    return statistics.fmean(inside) if inside else _rss_at(samples, name, total, (quarter + 0.5) / 4)


def _plot(results: list[RunResult], total: int, choice: BrokerChoice) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, name in zip(axes.flat, PLOTTED, strict=True):
        for number, result in enumerate(results, 1):
            x = [_done(s, name) / 1000 for s in result.samples]
            ax.plot(x, [s.rss_mib.get(name, 0.0) for s in result.samples], lw=1, label=f"run {number}")
        ax.set_title(name + (" (context)" if name in ("broker", "redis") else ""))
        ax.set_ylabel("RSS (MiB)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel(f"events processed by the process (thousands, of {total:,})")
    axes[0][0].legend()
    fig.suptitle(f"Memory at scale: RSS over the replay (figure 6, {choice.label})")
    fig.tight_layout()
    plot = plot_path(choice)
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    plt.close(fig)


def _figures(results: list[RunResult], total: int, train_rows: int) -> list[Figure]:
    figures = []
    for name in PLOTTED:
        quarters = [[_rss_at(r.samples, name, total, q / 4) for r in results] for q in (1, 2, 3, 4)]
        context = name in ("broker", "redis")
        figures.append(
            Figure(
                f"{name} RSS, mean over the last quarter of the replay" + (" (context)" if context else ""),
                "MiB",
                [_quarter_mean(r.samples, name, total, 3) for r in results],
                "second quarter",
                [_quarter_mean(r.samples, name, total, 1) for r in results],
                target="" if context else FLAT,
                note="at 25/50/75/100%: "
                + " / ".join(f"{statistics.median(q):,.0f}" for q in quarters)
                + " MiB",
            )
        )
    figures.append(
        Figure(
            f"train --once peak RSS, on the first {train_rows:,} events (context)",
            "MiB",
            [r.train_peak_mib for r in results],
        )
    )
    rows = [
        ("i12345", "ids like i12345, as the scorer wrote them", BUDGET),
        ("12345", "numeric ids below 65,536 (MovieLens-style)", BUDGET),
        ("123450", "numeric ids ×10 (4-byte ids above 65,535, as in MovieLens ml-latest)", BUDGET),
        ("uuid", "36-character UUID ids (text: over budget)", ""),
    ]
    for variant, label, target in rows:
        figures.append(
            Figure(
                f"Redis bytes per user, top-50, {label}: MEMORY USAGE",
                "bytes",
                [r.redis_bytes[(variant, "binary")][0] for r in results],
                "same lists as JSON",
                [r.redis_bytes[(variant, "json")][0] for r in results],
                target=target,
            )
        )
    figures.append(
        Figure(
            "Redis bytes per user, top-50, ids like i12345: used_memory delta / users (cross-check)",
            "bytes",
            [r.redis_bytes[("i12345", "binary")][1] for r in results],
            "same lists as JSON",
            [r.redis_bytes[("i12345", "json")][1] for r in results],
            target=BUDGET,
        )
    )
    return figures


def run(quick: bool) -> list[Section]:
    """The memory section (figure 6)."""
    n_events = 3_000 if quick else int(os.environ.get("BENCH_MEMORY_EVENTS", str(DEFAULT_EVENTS)))
    users = max(300, n_events // 10)
    items = max(200, users // 5)
    log_progress(f"  generating {n_events:,} events over {users:,} users and {items:,} items")
    # 12 events per user on average before repeats are dropped: enough for n_events, cut in time order.
    events = generate(users=users, items=items, events_per_user=(6, 18), seed=6).head(n_events)
    if len(events) < n_events:
        raise ValueError(f"the synthetic stream has {len(events):,} events, fewer than {n_events:,}")
    train_rows = int(len(events) * TRAIN_FRACTION) if not quick else len(events) // 5
    total = len(events) - train_rows
    runs = 1 if quick else int(os.environ.get("BENCH_MEMORY_RUNS", str(RUNS)))
    choice = chosen()
    results = []
    for number in range(1, runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            label = f"run {number}/{runs}"
            results.append(_one_run(events, train_rows, Path(tmp), 1 if quick else 3, label, choice))
    if not quick:
        _plot(results, total, choice)
    personal = statistics.median(r.personal / r.users for r in results)
    scorer_keys = statistics.median(r.redis_bytes[("scorer", "binary")][0] for r in results)
    sized = "" if quick or n_events == DEFAULT_EVENTS else f"BENCH_MEMORY_EVENTS={n_events} "
    sized += "" if quick or runs == RUNS else f"BENCH_MEMORY_RUNS={runs} "
    on = "" if choice.embedded else f" — {choice.label}"
    stack = "the embedded stack" if choice.embedded else f"the stack on {choice.label}"
    return [
        Section(
            f"Memory at scale (figure 6){on}",
            choice.env + sized + "python -m bench --only memory" + (" --quick" if quick else ""),
            _figures(results, total, train_rows),
            description=(
                (BELOW_FULL_SIZE if not quick and n_events < DEFAULT_EVENTS else "")
                + f"{len(events):,} synthetic events over {users:,} users and {items:,} items through {stack} "
                f"(ingest and scorer processes, 4 partitions, top-N {TOP_N}). The first {train_rows:,} "
                "events train one model (`streamrec train --once`, few epochs); the scorer serves it while "
                f"the other {total:,} are replayed at full speed, and every process's RSS is sampled each "
                "second against the events it has processed (ingest, broker, Redis: ingest's output; scorer: "
                "its committed offsets). RSS rows: mean over the last quarter of the replay against the "
                "second quarter (ratio = growth after the warm-up of the first). Broker and Redis are context: they hold the log and the "
                "lists, which grow with the stream by design. Bytes per user: the users with a top-50 list "
                f"({statistics.median(r.users for r in results):,.0f}, {personal:.0%} of them from the model), "
                f"`MEMORY USAGE` of {min(MEMORY_USAGE_KEYS, users):,} of their keys (`streamrec:recs:u<n>`) "
                "after the same lists were rewritten in a spare database of the same Redis per id style, "
                f"binary against the old JSON (the scorer's own keys: {scorer_keys:,.0f} bytes). "
                "used_memory also counts the hash table's buckets, amortised over the users."
            ),
            images=[] if quick else [f"{plot_path(choice).parent.name}/{plot_path(choice).name}"],
        )
    ]
