"""Which broker a stream benchmark runs on: ``BENCH_BROKER`` = ``embedded`` | ``kafka`` | ``kafka3``.

- ``embedded`` (default): the stack's embedded broker (Tansu), as every benchmark always did.
- ``kafka``: one Apache Kafka broker (KRaft), streamrec's topics at replication factor 1.
- ``kafka3``: three Apache Kafka brokers; streamrec's topics (Faust's changelogs included) at
  replication factor 3 and ``min.insync.replicas`` 2 (the cluster's default), as a production
  cluster would run them.

Apache Kafka runs from the jars ``scripts/fetch-kafka`` caches (``streamrec.kafka_cluster``). A
benchmark opens :func:`broker` around its stack and passes ``overrides`` to its Settings (an empty
dict on the embedded broker: the stack starts it), names the broker with ``label`` in its section
titles and writes its fragment under its own name (:meth:`BrokerChoice.fragment`), so the figures
of each broker are kept side by side on the results page.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrec.kafka_cluster import KAFKA_VERSION, ApacheKafka

VARIABLE = "BENCH_BROKER"


@dataclass(frozen=True)
class BrokerChoice:
    """One of the brokers a benchmark can run on."""

    name: str  # the value of BENCH_BROKER
    nodes: int  # Apache Kafka nodes; 0 for the embedded broker

    @property
    def embedded(self) -> bool:
        """True for the stack's embedded broker."""
        return self.nodes == 0

    @property
    def label(self) -> str:
        """The broker in words, for section titles and figure names."""
        if self.embedded:
            return "embedded broker"
        return f"Apache Kafka {KAFKA_VERSION}, {self.nodes} broker{'s' if self.nodes > 1 else ''}"

    @property
    def replication_factor(self) -> int:
        """The replication of streamrec's topics on this broker."""
        return min(self.nodes, 3) if self.nodes else 1

    @property
    def warm_up_runs(self) -> int:
        """Runs of a stream benchmark to make and discard before the measured ones. A JVM broker
        compiles its hot paths while it runs: on three fresh brokers the first 20-second runs at
        1,000 events/s measured p50 863, 290, 193 ms before settling at 130-160 ms, each broker's
        CPU falling from about 40% of a core to 20%. A production broker has long been warm. The
        embedded broker (native code) needs none, and gets slower as its topics fill."""
        return 0 if self.embedded else 2

    @property
    def env(self) -> str:
        """``BENCH_BROKER=<name> `` for a command line, or "" for the default broker."""
        return "" if self.embedded else f"{VARIABLE}={self.name} "

    def fragment(self, name: str) -> str:
        """The file name of a benchmark's fragment (or image stem) on this broker."""
        return name if self.embedded else f"{name}-{self.name}"


CHOICES = {
    "embedded": BrokerChoice("embedded", 0),
    "kafka": BrokerChoice("kafka", 1),
    "kafka3": BrokerChoice("kafka3", 3),
}


def chosen() -> BrokerChoice:
    """The broker ``BENCH_BROKER`` names (default: embedded); ValueError for an unknown name."""
    name = os.environ.get(VARIABLE, "embedded").strip().lower() or "embedded"
    if name not in CHOICES:
        raise ValueError(f"{VARIABLE}={name}: choose one of {', '.join(CHOICES)}")
    return CHOICES[name]


def fragment_names(name: str) -> list[str]:
    """Every fragment name a benchmark may have written (one per broker), default broker first."""
    return [choice.fragment(name) for choice in CHOICES.values()]


@dataclass
class Broker:
    """The broker a benchmark runs on, while it runs."""

    choice: BrokerChoice
    overrides: dict[str, Any] = field(default_factory=dict)  # Settings fields naming this broker
    cluster: ApacheKafka | None = None

    @property
    def label(self) -> str:
        """The broker in words (see :attr:`BrokerChoice.label`)."""
        return self.choice.label

    def pids(self) -> dict[str, int]:
        """Name -> PID of the broker processes started here (none for the embedded broker: the
        stack starts it, as its ``broker`` process)."""
        if self.cluster is None:
            return {}
        return {f"kafka-{node}": pid for node, pid in self.cluster.pids().items()}


@contextmanager
def broker(run_dir: Path, choice: BrokerChoice | None = None) -> Iterator[Broker]:
    """Start the chosen broker (nothing for the embedded one) and stop it on exit."""
    choice = choice or chosen()
    if choice.embedded:
        yield Broker(choice)
        return
    with ApacheKafka(Path(run_dir) / "kafka", nodes=choice.nodes) as cluster:
        yield Broker(
            choice,
            {"kafka_bootstrap": cluster.bootstrap, "replication_factor": choice.replication_factor},
            cluster,
        )
