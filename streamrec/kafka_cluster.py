"""Apache Kafka itself, for tests and development: N KRaft nodes on free loopback ports.

Each node is a combined controller+broker (``process.roles=broker,controller``); the N nodes form
one static controller quorum (``controller.quorum.voters``), so N=1 is a single broker and N=3 a
cluster that survives the loss of any one node. The broker runs from the jars that
``scripts/fetch-kafka`` puts in a cache outside the repository (see :func:`kafka_home`); Java 17+
must be on PATH (or under ``JAVA_HOME``).

Usage::

    with ApacheKafka(run_dir, nodes=3) as kafka:
        settings = Settings(kafka_bootstrap=kafka.bootstrap, replication_factor=3)
        ...
        kafka.kill(kafka.leader_of("topic", 0))   # SIGKILL, like a crash
        kafka.restart(node)                        # same node id, ports and log dir

Node ids are 0..N-1, the same numbers Kafka reports as partition leaders and replicas.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from streamrec.processes import ChildProcess, StackError, free_port, spawn, stop_all, wait_for_port
from streamrec.shared.logs import get_logger

log = get_logger(__name__)

KAFKA_VERSION = "4.1.1"  # the version scripts/fetch-kafka pins; change both together
SCALA_VERSION = "2.13"

PropertyValue = str | int | float | bool


def kafka_home() -> Path:
    """Where ``scripts/fetch-kafka`` keeps this Kafka version (its jars are under ``libs/``).

    ``$STREAMREC_KAFKA_HOME``, else ``${XDG_CACHE_HOME:-~/.cache}/streamrec/kafka-<version>``.
    """
    explicit = os.environ.get("STREAMREC_KAFKA_HOME")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "streamrec" / f"kafka-{KAFKA_VERSION}"


def kafka_libs() -> Path:
    """The directory of the Kafka jars; raises StackError if they were not fetched."""
    libs = kafka_home() / "libs"
    if not (libs / ".fetched").exists() or not (libs / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").exists():
        raise StackError(
            f"Apache Kafka {KAFKA_VERSION} is not in {libs}: run scripts/fetch-kafka "
            "(it needs Java 17+ and Maven; STREAMREC_KAFKA_HOME chooses another place)"
        )
    return libs


def java_binary() -> str:
    """The ``java`` to run Kafka with: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise StackError(f"no java on PATH: Apache Kafka {KAFKA_VERSION} needs Java 17 or newer")
    return found


def new_cluster_id() -> str:
    """A random KRaft cluster id (a UUID in URL-safe base64, as ``kafka-storage random-uuid`` prints)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # would read as an option on the command line
            return cluster_id


# The broker's own log: INFO to stdout (the node's log file), the chattiest loggers quieter.
_LOG4J2_PROPERTIES = """\
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class SecureListener:
    """One more listener on every node, for clients that speak TLS or log in.

    ``protocol``: ``SSL``, ``SASL_SSL`` or ``SASL_PLAINTEXT`` (its listener is named after it).
    TLS: the broker's certificate and its key, PEM (the key unencrypted, PKCS#8, as
    ``openssl req -nodes`` writes it). SASL: ``users`` (name -> password) may log in with every
    mechanism of :data:`SASL_MECHANISMS`; their SCRAM credentials are written when the storage is
    formatted. Brokers and controllers keep talking to each other in plaintext.
    """

    protocol: Literal["SSL", "SASL_SSL", "SASL_PLAINTEXT"]
    cert_file: Path | None = None
    key_file: Path | None = None
    users: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The listener's name in the broker's configuration."""
        return self.protocol

    @property
    def tls(self) -> bool:
        """True if clients speak TLS to it."""
        return self.protocol != "SASL_PLAINTEXT"

    @property
    def sasl(self) -> bool:
        """True if clients log in."""
        return self.protocol.startswith("SASL")

    def properties(self) -> dict[str, str]:
        """The broker settings of this listener (``listener.name.<name>.*``)."""
        prefix = f"listener.name.{self.name.lower()}."
        properties: dict[str, str] = {}
        if self.tls:
            if self.cert_file is None or self.key_file is None:
                raise ValueError(f"a {self.protocol} listener needs cert_file and key_file")
            properties[prefix + "ssl.keystore.type"] = "PEM"
            properties[prefix + "ssl.keystore.location"] = str(self._keystore_path())
        if self.sasl:
            properties[prefix + "sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
            plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
            properties[prefix + "plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            )
            for mechanism in SASL_MECHANISMS[1:]:
                properties[f"{prefix}{mechanism.lower()}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        return properties

    def _keystore_path(self) -> Path:
        assert self.cert_file is not None
        return self.cert_file.with_name(f"{self.cert_file.stem}-keystore.pem")

    def write_keystore(self) -> None:
        """Kafka's PEM keystore: the key and the certificate in one file."""
        if self.tls:
            assert self.cert_file is not None and self.key_file is not None
            self._keystore_path().write_text(self.key_file.read_text() + self.cert_file.read_text())

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create the SCRAM credentials of ``users``."""
        return [
            argument
            for name, password in self.users.items()
            for mechanism in SASL_MECHANISMS[1:]
            for argument in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]


@dataclass
class KafkaNode:
    """One KRaft node: its id, ports, directory, and its process while it runs."""

    node_id: int
    broker_port: int
    controller_port: int
    directory: Path
    secure_ports: dict[str, int] = field(default_factory=dict)  # listener name -> port
    process: ChildProcess | None = None

    @property
    def config_path(self) -> Path:
        """The node's server.properties."""
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        """The node's ``log.dirs`` (partitions and the metadata log)."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The broker's own log (its stdout and stderr)."""
        return self.directory / "server.log"

    def alive(self) -> bool:
        """True while the node's process runs."""
        return self.process is not None and self.process.alive()


class ApacheKafka:
    """N Apache Kafka KRaft nodes (combined controller+broker) on free loopback ports.

    Every node has its own directory ``run_dir/kafka-<id>`` (server.properties, data, server.log).
    ``server_properties`` are added to (and override) the test-friendly defaults of
    :meth:`default_properties`; ``heap`` is each JVM's ``-Xmx``; ``jvm_options`` are added to the
    java command line. Start with :meth:`start` (or ``with``); :meth:`stop` ends every process.
    """

    def __init__(
        self,
        run_dir: Path,
        nodes: int = 1,
        *,
        server_properties: Mapping[str, PropertyValue] | None = None,
        heap: str = "512m",
        jvm_options: Sequence[str] = (),
        start_timeout: float = 120.0,
        secure_listeners: Sequence[SecureListener] = (),
    ) -> None:
        """Describe the cluster; nothing starts until :meth:`start`."""
        if nodes < 1:
            raise ValueError("a Kafka cluster needs at least one node")
        self.run_dir = Path(run_dir)
        self.size = nodes
        self.extra_properties = dict(server_properties or {})
        self.heap = heap
        self.jvm_options = list(jvm_options)
        self.start_timeout = start_timeout
        self.cluster_id = new_cluster_id()
        self.secure_listeners = list(secure_listeners)
        ports: set[int] = set()
        per_node = 2 + len(self.secure_listeners)
        while len(ports) < per_node * nodes:
            ports.add(free_port())
        free = iter(sorted(ports))
        self.nodes = [
            KafkaNode(
                i,
                next(free),
                next(free),
                self.run_dir / f"kafka-{i}",
                {listener.name: next(free) for listener in self.secure_listeners},
            )
            for i in range(nodes)
        ]
        self._admin: Any = None

    # -- configuration ---------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """The brokers' addresses, comma-separated, for ``bootstrap.servers``."""
        return ",".join(f"127.0.0.1:{node.broker_port}" for node in self.nodes)

    def bootstrap_of(self, listener: SecureListener) -> str:
        """The brokers' addresses on one of the secure listeners."""
        return ",".join(f"127.0.0.1:{node.secure_ports[listener.name]}" for node in self.nodes)

    def default_properties(self) -> dict[str, str]:
        """Broker settings for tests: replication as the cluster's size allows, fast group joins."""
        replication = min(self.size, 3)
        min_isr = 2 if self.size >= 3 else 1
        return {
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "10",  # 50 by default: slow to create on a small machine
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            # As the embedded broker (Tansu) does: a topic a client asks for is created, with 4
            # partitions (streamrec creates its own topics explicitly: streamrec.shared.topic_admin).
            "auto.create.topics.enable": "true",
            "num.partitions": "4",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }

    def _properties(self, node: KafkaNode) -> dict[str, str]:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        secure = [
            f"{listener.name}://127.0.0.1:{node.secure_ports[listener.name]}"
            for listener in self.secure_listeners
        ]
        protocols = [f"{listener.name}:{listener.protocol}" for listener in self.secure_listeners]
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": ",".join(
                [
                    f"PLAINTEXT://127.0.0.1:{node.broker_port}",
                    f"CONTROLLER://127.0.0.1:{node.controller_port}",
                    *secure,
                ]
            ),
            "advertised.listeners": ",".join([f"PLAINTEXT://127.0.0.1:{node.broker_port}", *secure]),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT", *protocols]
            ),
            "log.dirs": str(node.data_dir),
            **self.default_properties(),
        }
        for listener in self.secure_listeners:
            properties.update(listener.properties())
        for key, value in self.extra_properties.items():
            properties[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return properties

    def _write_config(self, node: KafkaNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self._properties(node).items()]
        node.config_path.write_text("\n".join(lines) + "\n")

    @property
    def _log4j_config(self) -> Path:
        return self.run_dir / "kafka-log4j2.properties"

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            java_binary(),
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._log4j_config}",
            *self.jvm_options,
            "-cp",
            str(kafka_libs() / "*"),
            main_class,
            *args,
        ]

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ApacheKafka:
        """Format every node's storage (once), start all nodes and wait until every broker is in
        the cluster's metadata. On failure every process started is stopped and StackError raised."""
        started = time.monotonic()
        kafka_libs()  # fail early, with the hint to fetch
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log4j_config.write_text(_LOG4J2_PROPERTIES)
        try:
            for listener in self.secure_listeners:
                listener.write_keystore()
            for node in self.nodes:
                self._write_config(node)
            self._format()
            for node in self.nodes:
                self._spawn(node)
            for node in self.nodes:
                assert node.process is not None
                remaining = self.start_timeout - (time.monotonic() - started)
                wait_for_port("127.0.0.1", node.broker_port, max(remaining, 1.0), node.process)
            self.wait_for_brokers(
                {node.node_id for node in self.nodes}, self.start_timeout - (time.monotonic() - started)
            )
        except BaseException:
            self.stop()
            raise
        log.info(
            "apache kafka started",
            extra={
                "bootstrap": self.bootstrap,
                "nodes": self.size,
                "pids": [n.process.pid for n in self.nodes if n.process],
                "seconds": round(time.monotonic() - started, 1),
            },
        )
        return self

    def _format(self) -> None:
        """``kafka-storage format`` for every node not formatted yet (in parallel: a JVM each)."""
        pending: list[tuple[KafkaNode, subprocess.Popen[bytes]]] = []
        for node in self.nodes:
            meta = node.data_dir / "meta.properties"
            if meta.exists():  # formatted by an earlier run on this run dir: keep its cluster id
                for line in meta.read_text().splitlines():
                    if line.startswith("cluster.id="):
                        self.cluster_id = line.split("=", 1)[1].strip()
                continue
            argv = self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(node.config_path),
                *(argument for listener in self.secure_listeners for argument in listener.format_arguments()),
            )
            with open(node.directory / "format.log", "wb") as out:
                pending.append((node, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)))
        failed: list[str] = []
        for node, popen in pending:
            try:
                code = popen.wait(timeout=self.start_timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
                code = None
            if code != 0:
                output = (node.directory / "format.log").read_text(errors="replace")[-2000:]
                failed.append(f"kafka-{node.node_id} (exit {code}):\n{output}")
        if failed:
            raise StackError("formatting Kafka storage failed: " + "\n".join(failed))

    def _spawn(self, node: KafkaNode) -> None:
        node.process = spawn(
            f"kafka-{node.node_id}", self._java("kafka.Kafka", str(node.config_path)), node.log_path
        )

    def _node(self, node: int) -> KafkaNode:
        if not 0 <= node < self.size:
            raise ValueError(f"no Kafka node {node}: the cluster has nodes 0..{self.size - 1}")
        return self.nodes[node]

    def kill(self, node: int) -> None:
        """SIGKILL one node, as a crash would; its data stays for :meth:`restart`."""
        target = self._node(node)
        if target.process is not None and target.process.alive():
            target.process.kill()
        log.info("kafka node killed", extra={"node": node})

    def stop_node(self, node: int, timeout: float = 30.0) -> None:
        """Stop one node cleanly (SIGTERM, then SIGKILL after ``timeout``)."""
        target = self._node(node)
        if target.process is not None:
            target.process.stop(timeout)

    def restart(self, node: int, timeout: float | None = None) -> None:
        """Start a stopped or killed node again (same id, ports and data) and wait until it is
        back in the cluster's metadata."""
        target = self._node(node)
        if target.alive():
            raise StackError(f"kafka-{node} still runs: kill or stop it before restarting it")
        timeout = self.start_timeout if timeout is None else timeout
        started = time.monotonic()
        self._spawn(target)
        assert target.process is not None
        wait_for_port("127.0.0.1", target.broker_port, timeout, target.process)
        self.wait_for_brokers({node}, timeout - (time.monotonic() - started), exact=False)
        log.info("kafka node restarted", extra={"node": node, "pid": target.process.pid})

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node: SIGTERM to all at once, SIGKILL to any still running after ``timeout``."""
        stop_all((node.process for node in self.nodes if node.process is not None), timeout)
        self._admin = None

    def pids(self) -> dict[int, int]:
        """Node id -> PID of every node process started so far (running or not)."""
        return {node.node_id: node.process.pid for node in self.nodes if node.process is not None}

    def __enter__(self) -> ApacheKafka:
        """Start the cluster."""
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Stop the cluster."""
        self.stop()

    # -- metadata --------------------------------------------------------------------------------

    def admin(self) -> Any:
        """A confluent_kafka AdminClient on this cluster (one, kept until :meth:`stop`)."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            # Connection errors to a killed node are expected here: keep them out of stderr.
            self._admin = AdminClient(
                {
                    "bootstrap.servers": self.bootstrap,
                    "logger": get_logger(f"{__name__}.admin"),
                    "log_level": 3,
                }
            )
        return self._admin

    def _metadata(self, timeout: float = 5.0) -> Any:
        return self.admin().list_topics(timeout=timeout)

    def brokers(self, timeout: float = 5.0) -> set[int]:
        """Ids of the brokers the cluster's metadata lists (live and not fenced)."""
        return set(self._metadata(timeout).brokers)

    def wait_for_brokers(self, node_ids: set[int], timeout: float, exact: bool = True) -> None:
        """Block until the metadata lists the brokers ``node_ids`` (``exact``: and no other);
        raise StackError on timeout, or when one of those nodes' processes died."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + max(timeout, 1.0)
        seen: set[int] | str = "no answer"
        while time.monotonic() < deadline:
            for node_id in node_ids:
                process = self._node(node_id).process
                if process is not None and not process.alive():
                    raise StackError(f"kafka-{node_id} exited early:\n{process.log_tail()}")
            try:
                seen = self.brokers(timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
            except KafkaException as exc:
                seen = str(exc)
            else:
                if (seen == node_ids) if exact else node_ids <= seen:
                    return
            time.sleep(0.2)
        raise StackError(
            f"Kafka brokers {sorted(node_ids)} not all in the metadata after {timeout:.0f}s (saw {seen})"
        )

    def _partition(self, topic: str, partition: int) -> Any:
        # All topics: a metadata request naming a missing topic would create it here.
        topics = self._metadata().topics
        if topic not in topics or topics[topic].error is not None:
            raise StackError(f"no topic {topic} on Kafka at {self.bootstrap}")
        partitions = topics[topic].partitions
        if partition not in partitions:
            raise StackError(f"topic {topic} has no partition {partition}")
        return partitions[partition]

    def leader_of(self, topic: str, partition: int) -> int | None:
        """Node id of the partition's leader, or None while it has none."""
        leader = self._partition(topic, partition).leader
        return None if leader < 0 else int(leader)

    def in_sync_replicas(self, topic: str, partition: int) -> list[int]:
        """Node ids of the partition's in-sync replicas."""
        return sorted(self._partition(topic, partition).isrs)
