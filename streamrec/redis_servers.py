"""Redis beyond one server, for tests and benchmarks: a Redis Cluster and a Sentinel group, each
on free loopback ports, each process in its own directory and stopped by its PID.

- :class:`RedisClusterServers`: N primaries with R replicas each (3 and 1 by default: 6 nodes),
  joined by ``redis-cli --cluster create ... --cluster-replicas R --cluster-yes`` (Debian's
  ``redis-tools``); ready when every node says ``cluster_state:ok`` with all slots assigned and
  every replica is in sync with its primary.
- :class:`SentinelGroup`: one primary, R replicas (1 by default) and S sentinels (3 by default,
  quorum 2); ready when every sentinel names the same primary, sees every replica and knows
  the other sentinels. Sentinels run as ``redis-sentinel`` (Debian's ``redis-sentinel``) or,
  without it, ``redis-server --sentinel`` (the same binary).

Usage::

    with RedisClusterServers(run_dir) as cluster:
        settings = Settings(redis_url=cluster.url)           # redis+cluster://127.0.0.1:p1,...
        node = cluster.primary_for(b"some-key")
        cluster.kill(node)                                   # SIGKILL, like a crash
        cluster.wait_for_promotion(node)                     # its replica takes over its slots

    with SentinelGroup(run_dir) as group:
        settings = Settings(redis_url=group.url)             # redis+sentinel://.../streamrec/0
        old = group.kill_primary()
        group.wait_for_promotion(old)

Timeouts are short, for tests: a cluster node is failed over after ``node_timeout_ms`` (2 s), a
Sentinel primary after ``down_after_ms`` (1 s). Nothing is persisted (no RDB, no AOF).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote

import redis

from streamrec.embedded import redis_binary
from streamrec.processes import ChildProcess, StackError, free_port, spawn, stop_all, wait_for_port
from streamrec.shared.logs import get_logger
from streamrec.shared.redis_connection import connect
from streamrec.shared.settings import Settings

log = get_logger(__name__)

HOST = "127.0.0.1"
SLOTS = 16384
T = TypeVar("T")


@dataclass
class RedisNode:
    """One redis-server (or sentinel) process: its name, port, directory and process."""

    name: str
    port: int
    directory: Path
    argv: list[str]
    process: ChildProcess | None = None

    @property
    def address(self) -> str:
        """``host:port``, as the cluster and the sentinels name it."""
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The process's own log."""
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        """The PID of the process started last, None if never started."""
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.alive()

    def client(self, password: str | None = None, timeout: float = 2.0) -> redis.Redis:
        """A plain client of this one process (no cluster redirects, no sentinel lookups)."""
        auth = f":{quote(password, safe='')}@" if password else ""
        client = connect(
            _plain_settings(),
            url=f"redis://{auth}{self.address}/0",
            socket_timeout=timeout,
            connect_timeout=timeout,
        )
        assert isinstance(client, redis.Redis)
        return client


@functools.cache
def _plain_settings() -> Settings:
    """Settings for plain-text clients of single nodes, whatever TLS files the environment sets."""
    return Settings(redis_url=None, redis_tls_ca_file=None, redis_tls_cert_file=None, redis_tls_key_file=None)


def cluster_tools_missing() -> str | None:
    """Why a Redis Cluster cannot be started here (no ``redis-cli``), or None if it can."""
    if shutil.which("redis-cli") is None:
        return "no redis-cli on PATH (Debian's redis-tools): cannot create a Redis Cluster"
    return None


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise StackError("no redis-cli on PATH: install Debian's redis-tools (it creates the cluster)")
    return found


def _sentinel_argv(config: Path) -> list[str]:
    sentinel = shutil.which("redis-sentinel")
    if sentinel is not None:
        return [sentinel, str(config)]
    return [redis_binary(), str(config), "--sentinel"]


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _poll(condition: Callable[[], T | None], timeout: float, what: str, nodes: Iterable[RedisNode] = ()) -> T:
    """``condition()``'s first truthy value within ``timeout`` s; StackError naming ``what`` if
    none, or at once if one of ``nodes`` died (with the tail of its log)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        for node in nodes:
            if node.process is not None and not node.alive():
                raise StackError(f"{node.name} exited while waiting for {what}:\n{node.process.log_tail()}")
        try:
            result = condition()
            if result:
                return result
        except redis.RedisError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(0.1)


def _info_fields(text: str) -> dict[str, str]:
    """``CLUSTER INFO``'s ``key:value`` lines as a dict."""
    fields = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields[key.strip()] = value.strip()
    return fields


class _Servers:
    """What both groups share: nodes, start/stop by PID, kill, restart."""

    nodes: list[RedisNode]
    start_timeout: float
    password: str | None

    def _spawn(self, node: RedisNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        node.process = spawn(node.name, node.argv, node.log_path)

    def _start_and_wait(self, nodes: Iterable[RedisNode], deadline: float) -> None:
        nodes = list(nodes)
        for node in nodes:
            self._spawn(node)
        for node in nodes:
            assert node.process is not None
            wait_for_port(HOST, node.port, max(deadline - time.monotonic(), 1.0), node.process)

    def node(self, name_or_port: str | int) -> RedisNode:
        """The node of that name (``redis-2``, ``sentinel-0``) or port."""
        for node in self.nodes:
            if name_or_port in (node.name, node.port):
                return node
        raise ValueError(f"no node {name_or_port!r} here: {[n.name for n in self.nodes]}")

    def kill(self, node: RedisNode) -> float:
        """SIGKILL ``node``'s process, as a crash would; returns the monotonic time of the kill."""
        if node.process is None or not node.alive():
            raise StackError(f"{node.name} does not run")
        killed_at = node.process.kill()
        log.info("redis node killed", extra={"node": node.name, "pid": node.process.pid})
        return killed_at

    def restart(self, node: RedisNode) -> None:
        """Start a killed or stopped node again: same port, directory and configuration."""
        if node.alive():
            raise StackError(f"{node.name} still runs: kill it before restarting it")
        self._spawn(node)
        assert node.process is not None
        wait_for_port(HOST, node.port, self.start_timeout, node.process)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process started: SIGTERM to all at once, SIGKILL after ``timeout``."""
        stop_all((node.process for node in self.nodes if node.process is not None), timeout)

    def pids(self) -> dict[str, int]:
        """Node name -> PID of every process started so far (running or not)."""
        return {node.name: node.process.pid for node in self.nodes if node.process is not None}

    def start(self) -> Self:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Start the servers."""
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Stop the servers."""
        self.stop()


def _server_argv(port: int, directory: Path, password: str | None, *extra: str) -> list[str]:
    argv = [
        redis_binary(),
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "no",
        "--shutdown-timeout", "0",  # stop() must not wait for replicas
        *extra,
    ]  # fmt: skip
    if password:
        argv += ["--requirepass", password, "--masterauth", password]
    return argv


class RedisClusterServers(_Servers):
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, on loopback.

    Each node lives in ``run_dir/redis-<i>`` (its ``nodes.conf`` and ``redis.log``). ``password``
    (if any) is every node's ``requirepass`` and ``masterauth``. Start with :meth:`start` (or
    ``with``); :meth:`stop` ends every process.
    """

    def __init__(
        self,
        run_dir: Path,
        primaries: int = 3,
        replicas: int = 1,
        *,
        password: str | None = None,
        node_timeout_ms: int = 2000,
        start_timeout: float = 60.0,
    ) -> None:
        """Describe the cluster; nothing starts until :meth:`start`."""
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self.run_dir = Path(run_dir)
        self.primaries_count = primaries
        self.replicas_count = replicas
        self.password = password
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.nodes = []
        count = primaries * (1 + replicas)
        ports = _free_ports(2 * count)
        # The cluster bus gets a free port of its own (``cluster-port``): its default, the data
        # port + 10000, may be taken or above 65535.
        for i, (port, bus_port) in enumerate(zip(ports[:count], ports[count:], strict=True)):
            directory = self.run_dir / f"redis-{i}"
            argv = _server_argv(
                port,
                directory,
                password,
                "--cluster-enabled", "yes",
                "--cluster-port", str(bus_port),
                "--cluster-config-file", str(directory / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-replica-validity-factor", "0",  # a replica may always take over
            )  # fmt: skip
            self.nodes.append(RedisNode(f"redis-{i}", port, directory, argv))
        self.started_seconds: float | None = None
        self._replicas_at_kill: dict[str, list[RedisNode]] = {}

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]host:port,...``: every node, for streamrec's settings."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}" + ",".join(node.address for node in self.nodes)

    def start(self) -> RedisClusterServers:
        """Start every node, create the cluster and wait until it is ok everywhere. On failure
        every process started is stopped and StackError raised."""
        started = time.monotonic()
        deadline = started + self.start_timeout
        cli = _redis_cli()
        try:
            self._start_and_wait(self.nodes, deadline)
            argv = [cli, *(["-a", self.password, "--no-auth-warning"] if self.password else [])]
            argv += ["--cluster", "create", *(n.address for n in self.nodes)]
            argv += ["--cluster-replicas", str(self.replicas_count), "--cluster-yes"]
            try:
                created = subprocess.run(
                    argv, capture_output=True, text=True, timeout=max(deadline - time.monotonic(), 1.0)
                )
            except subprocess.TimeoutExpired as exc:
                raise StackError(f"redis-cli --cluster create took over {self.start_timeout:.0f}s") from exc
            (self.run_dir / "cluster-create.log").write_text(created.stdout + created.stderr)
            if created.returncode != 0:
                output = (created.stdout + created.stderr)[-2000:]
                raise StackError(f"redis-cli --cluster create failed (exit {created.returncode}):\n{output}")
            self.wait_until_ok(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - started
        log.info(
            "redis cluster started",
            extra={
                "nodes": [n.address for n in self.nodes],
                "pids": list(self.pids().values()),
                "seconds": round(self.started_seconds, 1),
            },
        )
        return self

    # -- state -----------------------------------------------------------------------------------

    def cluster_info(self, node: RedisNode) -> dict[str, str]:
        """``CLUSTER INFO`` of one node."""
        with node.client(self.password) as client:
            return _info_fields(client.execute_command("CLUSTER", "INFO").decode())

    def _cluster_nodes(self, node: RedisNode) -> list[dict[str, str]]:
        """``CLUSTER NODES`` of one node: each known node's address, flags, primary id, slots."""
        with node.client(self.password) as client:
            text = client.execute_command("CLUSTER", "NODES").decode()
        rows = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            address = fields[1].split("@")[0]
            flags = set(fields[2].split(","))
            rows.append(
                {
                    "id": fields[0],
                    "address": address,
                    "role": "primary" if "master" in flags else "replica",
                    "failed": "yes" if flags & {"fail", "fail?"} else "no",
                    "primary_id": fields[3],
                    "slots": " ".join(fields[8:]),
                }
            )
        return rows

    def _ok_everywhere(self, nodes: Iterable[RedisNode]) -> bool:
        nodes = list(nodes)
        for node in nodes:
            info = self.cluster_info(node)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            if int(info.get("cluster_known_nodes", 0)) < len(self.nodes):
                return False
        # Every replica that runs has its data: a failover can promote it at once.
        for node in nodes:
            with node.client(self.password) as client:
                replication = client.info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def wait_until_ok(self, timeout: float | None = None) -> None:
        """Block until every running node says ``cluster_state:ok`` with all slots served and
        every running replica is in sync with its primary."""
        running = [node for node in self.nodes if node.alive()]
        _poll(
            lambda: self._ok_everywhere(running),
            self.start_timeout if timeout is None else timeout,
            "cluster_state:ok on every node",
            running,
        )

    def primaries(self) -> list[RedisNode]:
        """The running nodes that are primaries now (as a running node sees the cluster)."""
        viewer = next(node for node in self.nodes if node.alive())
        addresses = {
            row["address"]
            for row in self._cluster_nodes(viewer)
            if row["role"] == "primary" and row["failed"] == "no" and row["slots"]
        }
        return [node for node in self.nodes if node.address in addresses and node.alive()]

    def replicas_of(self, primary: RedisNode) -> list[RedisNode]:
        """The nodes that replicate ``primary`` now."""
        viewer = primary if primary.alive() else next(node for node in self.nodes if node.alive())
        rows = self._cluster_nodes(viewer)
        ids = [row["id"] for row in rows if row["address"] == primary.address]
        addresses = {row["address"] for row in rows if ids and row["primary_id"] == ids[0]}
        return [node for node in self.nodes if node.address in addresses]

    def primary_for(self, key: bytes | str) -> RedisNode:
        """The node that serves ``key``'s slot now."""
        viewer = next(node for node in self.nodes if node.alive())
        with viewer.client(self.password) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.node(int(primary[1]))
        raise StackError(f"no node serves slot {slot}")

    def kill(self, node: RedisNode) -> float:
        """SIGKILL ``node``, as a crash would (its replicas are noted first, for
        :meth:`wait_for_promotion`); returns the monotonic time of the kill."""
        self._replicas_at_kill[node.name] = self.replicas_of(node)
        return super().kill(node)

    def wait_for_promotion(self, old_primary: RedisNode, timeout: float = 30.0) -> RedisNode:
        """Block until one of ``old_primary``'s replicas (those it had when :meth:`kill` killed
        it) is a primary and the cluster is ok again on the running nodes; returns it."""
        replicas = self._replicas_at_kill.get(old_primary.name) or self.replicas_of(old_primary)
        if not replicas:
            raise StackError(f"{old_primary.name} has no replica to promote")
        running = [node for node in self.nodes if node.alive()]

        def promoted() -> RedisNode | None:
            for replica in replicas:
                if not replica.alive():
                    continue
                with replica.client(self.password) as client:
                    if client.info("replication").get("role") != "master":
                        continue
                if all(self.cluster_info(node).get("cluster_state") == "ok" for node in running):
                    return replica
            return None

        return _poll(promoted, timeout, f"a replica of {old_primary.name} to take over", running)


class SentinelGroup(_Servers):
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels monitoring them as
    ``master_name``, on loopback.

    Directories: ``run_dir/redis-<i>`` (``redis-0`` is the first primary) and
    ``run_dir/sentinel-<i>`` (each with the ``sentinel.conf`` that sentinel rewrites).
    ``password`` is the data nodes' ``requirepass``/``masterauth`` (and the sentinels' ``auth-pass``);
    ``sentinel_password`` the sentinels' own ``requirepass``.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        master_name: str = "streamrec",
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10000,
        start_timeout: float = 60.0,
    ) -> None:
        """Describe the group; nothing starts until :meth:`start`."""
        if sentinels < 1 or replicas < 1:
            raise ValueError("a Sentinel group needs a replica and a sentinel at least")
        self.run_dir = Path(run_dir)
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.quorum = quorum if quorum is not None else sentinels // 2 + 1
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.start_timeout = start_timeout
        ports = _free_ports(1 + replicas + sentinels)
        data_ports, sentinel_ports = ports[: 1 + replicas], ports[1 + replicas :]
        self.servers: list[RedisNode] = []
        for i, port in enumerate(data_ports):
            directory = self.run_dir / f"redis-{i}"
            extra = [] if i == 0 else ["--replicaof", HOST, str(data_ports[0])]
            argv = _server_argv(port, directory, password, *extra)
            self.servers.append(RedisNode(f"redis-{i}", port, directory, argv))
        self.sentinels: list[RedisNode] = []
        for i, port in enumerate(sentinel_ports):
            directory = self.run_dir / f"sentinel-{i}"
            config = directory / "sentinel.conf"
            self.sentinels.append(RedisNode(f"sentinel-{i}", port, directory, _sentinel_argv(config)))
        self.nodes = [*self.servers, *self.sentinels]
        self.started_seconds: float | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]host:port,.../<master name>/0`` for streamrec's settings
        (the sentinels' own password goes in ``STREAMREC_REDIS_SENTINEL_PASSWORD``)."""
        auth = f":{self.password}@" if self.password else ""
        sentinels = ",".join(node.address for node in self.sentinels)
        return f"redis+sentinel://{auth}{sentinels}/{self.master_name}/0"

    def _write_sentinel_config(self, node: RedisNode) -> None:
        primary = self.servers[0]
        lines = [
            f"port {node.port}",
            f"bind {HOST}",
            f"dir {node.directory}",
            f"sentinel monitor {self.master_name} {HOST} {primary.port} {self.quorum}",
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.master_name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
        if self.sentinel_password:  # also what this sentinel presents to the other sentinels
            lines.append(f"requirepass {self.sentinel_password}")
        node.directory.mkdir(parents=True, exist_ok=True)
        (node.directory / "sentinel.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> SentinelGroup:
        """Start the primary and replicas, wait for the replicas' sync, start the sentinels and
        wait until they agree. On failure every process started is stopped and StackError raised."""
        started = time.monotonic()
        deadline = started + self.start_timeout
        try:
            self._start_and_wait(self.servers, deadline)
            _poll(
                lambda: all(self._replica_in_sync(node) for node in self.servers[1:]),
                max(deadline - time.monotonic(), 1.0),
                "the replicas to sync with the primary",
                self.servers,
            )
            for node in self.sentinels:
                self._write_sentinel_config(node)
            self._start_and_wait(self.sentinels, deadline)
            self.wait_for_agreement(self.servers[0], max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - started
        log.info(
            "redis sentinel group started",
            extra={
                "primary": self.servers[0].address,
                "sentinels": [n.address for n in self.sentinels],
                "pids": list(self.pids().values()),
                "seconds": round(self.started_seconds, 1),
            },
        )
        return self

    # -- state -----------------------------------------------------------------------------------

    def _replica_in_sync(self, node: RedisNode) -> bool:
        with node.client(self.password) as client:
            replication = client.info("replication")
        return replication.get("role") == "slave" and replication.get("master_link_status") == "up"

    def sentinel_client(self, node: RedisNode) -> redis.Redis:
        """A plain client of one sentinel."""
        return node.client(self.sentinel_password)

    def _sentinel_view(self, node: RedisNode) -> dict[str, object]:
        """What one sentinel says of the primary: its address, flags, replicas and other sentinels."""
        with self.sentinel_client(node) as client:
            master = client.sentinel_master(self.master_name)
        return master

    def primary(self) -> RedisNode:
        """The data node the running sentinels name as primary now (the first that answers)."""
        for node in self.sentinels:
            if not node.alive():
                continue
            with contextlib.suppress(redis.RedisError), self.sentinel_client(node) as client:
                _host, port = client.sentinel_get_master_addr_by_name(self.master_name)
                return self.node(int(port))
        raise StackError("no sentinel answers")

    def wait_for_agreement(self, primary: RedisNode, timeout: float = 30.0) -> None:
        """Block until every running sentinel names ``primary``, sees its running replicas as up
        and knows the other running sentinels."""
        sentinels = [node for node in self.sentinels if node.alive()]
        replicas = [node for node in self.servers if node is not primary and node.alive()]

        def agreed() -> bool:
            for node in sentinels:
                view = self._sentinel_view(node)
                if int(view["port"]) != primary.port or view.get("is_sdown") or view.get("is_odown"):
                    return False
                if int(view.get("num-other-sentinels", 0)) < len(sentinels) - 1:
                    return False
                with self.sentinel_client(node) as client:
                    seen = client.sentinel_slaves(self.master_name)
                up = {int(r["port"]) for r in seen if not r.get("is_sdown") and not r.get("is_odown")}
                if not {r.port for r in replicas} <= up:
                    return False
            return True

        _poll(agreed, timeout, f"the sentinels to agree on {primary.name} as primary", sentinels)

    def kill_primary(self) -> tuple[RedisNode, float]:
        """SIGKILL the current primary; returns it and the monotonic time of the kill."""
        primary = self.primary()
        return primary, self.kill(primary)

    def wait_for_promotion(self, old_primary: RedisNode, timeout: float = 60.0) -> RedisNode:
        """Block until the running sentinels name a new primary that says it is one; returns it."""
        sentinels = [node for node in self.sentinels if node.alive()]

        def promoted() -> RedisNode | None:
            named = set()
            for node in sentinels:
                with self.sentinel_client(node) as client:
                    named.add(int(client.sentinel_get_master_addr_by_name(self.master_name)[1]))
            if len(named) != 1 or old_primary.port in named:
                return None
            new = self.node(named.pop())
            with new.client(self.password) as client:
                return new if client.info("replication").get("role") == "master" else None

        return _poll(promoted, timeout, f"the sentinels to promote a replica of {old_primary.name}")
