"""The embedded stack: servers for every URL left unset, plus streamrec's services as supervised
child processes (``python -m streamrec <service>``), each logging to ``<run_dir>/<instance>.log``.
A service may run as several instances (``replicas``): ``ingest-1``, ``ingest-2``, … share the
work through their Kafka consumer group, as they would on several machines.

Used by ``streamrec dev``, ``streamrec demo`` and the integration tests. Everything started here
is stopped by :meth:`Stack.stop`, and children also die with this process (see processes.py).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from streamrec.embedded import EmbeddedServers, start_missing_servers
from streamrec.processes import ChildProcess, StackError, free_port, spawn, wait_for_port
from streamrec.shared.logs import get_logger
from streamrec.shared.settings import Settings

log = get_logger(__name__)

SERVICES = ("ingest", "scorer", "trainer", "api")
SCALABLE = ("ingest", "scorer")  # consumer groups share the partitions; one trainer, one api port
MAX_RESTARTS = 5


def new_run_dir(root: Path) -> Path:
    """A fresh folder for one run's logs and state: ``root/runs/YYYYmmdd-HHMMSS[-n]``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        path = root / "runs" / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise StackError(f"cannot create a run folder under {root / 'runs'}")


class Stack:
    """Embedded servers (where needed) + the chosen services, supervised."""

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        services: Sequence[str] = SERVICES,
        replicas: Mapping[str, int] | None = None,
    ) -> None:
        replicas = dict(replicas or {})
        unknown = (set(services) | set(replicas)) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {', '.join(SERVICES)}")
        if any(count < 1 for count in replicas.values()):
            raise ValueError(f"replicas must be at least 1: {replicas}")
        if {service for service, count in replicas.items() if count > 1} - set(SCALABLE):
            raise ValueError(f"only {' and '.join(SCALABLE)} run as several instances: {replicas}")
        self.run_dir = run_dir
        self.services = list(services)
        # Instance name -> service: "ingest", or "ingest-1", "ingest-2", … with replicas.
        self.instances: dict[str, str] = {}
        for service in services:
            count = replicas.get(service, 1)
            names = [service] if count == 1 else [f"{service}-{k}" for k in range(1, count + 1)]
            self.instances |= dict.fromkeys(names, service)
        self._requested = settings
        self._servers: EmbeddedServers | None = None
        self.children: dict[str, ChildProcess] = {}
        self.restarts: dict[str, int] = dict.fromkeys(self.instances, 0)
        # Each service's /metrics, /healthz, /readyz port: services share this machine, so each gets
        # a free one (kept across restarts) unless the endpoints are off (STREAMREC_METRICS_PORT=0).
        self.ops_ports: dict[str, int] = {}

    @property
    def settings(self) -> Settings:
        """Settings pointing at the servers in use (embedded or external)."""
        return self._servers.settings if self._servers else self._requested

    def start(self) -> Stack:
        """Start servers, create topics, start services; the API is waited for, others not."""
        if "api" in self.services:
            _check_port_free(self._requested.api_host, self._requested.api_port)
        try:
            self._servers = start_missing_servers(self._requested, self.run_dir)
            for name in self.instances:
                self._spawn(name)
            if "api" in self.children:
                wait_for_port(self.settings.api_host, self.settings.api_port, 60, self.children["api"])
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str) -> None:
        service = self.instances[name]
        env = {**os.environ, **self.settings.as_env()}
        if service != "api" and self.settings.metrics_port:
            port = self.ops_ports.setdefault(name, free_port())
            env["STREAMREC_METRICS_PORT"] = str(port)
        if service == "ingest" and name != service:
            # Each Faust worker keeps its table state (RocksDB, locked by one process) apart.
            env["STREAMREC_DATA_DIR"] = str(self.settings.data_dir / name)
        argv = [sys.executable, "-m", "streamrec", service]
        self.children[name] = spawn(name, argv, self.run_dir / f"{name}.log", env)
        log.info(
            "service started",
            extra={
                "service_name": name,
                "pid": self.children[name].pid,
                "ops_port": self.ops_ports.get(name),
            },
        )

    def supervise(self) -> None:
        """Restart services that died (up to MAX_RESTARTS each); raise if one keeps dying."""
        for name, child in list(self.children.items()):
            if child.alive():
                continue
            self.restarts[name] += 1
            if self.restarts[name] > MAX_RESTARTS:
                raise StackError(
                    f"{name} keeps exiting (code {child.popen.returncode}); its log:\n{child.log_tail()}"
                )
            log.warning(
                "service exited, restarting",
                extra={"service_name": name, "code": child.popen.returncode, "log": str(child.log_path)},
            )
            self._spawn(name)

    def pids(self) -> list[int]:
        """Process ids of every child (services and servers)."""
        return [c.pid for c in self.processes().values()]

    def processes(self) -> dict[str, ChildProcess]:
        """Every child by name: embedded servers (``broker``, ``redis``) and service instances."""
        servers = self._servers.processes if self._servers else []
        return {child.name: child for child in servers} | self.children

    def stop(self) -> None:
        """Stop services (gracefully, in reverse order), then the embedded servers."""
        for name in reversed(list(self.children)):
            self.children.pop(name).stop()
        if self._servers:
            self._servers.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_port_free(host: str, port: int) -> None:
    """Fail at once, with what to do, if a server already listens on ``host:port``.

    The probe binds as uvicorn will, with SO_REUSEADDR: connections of a stopped server still in
    TIME_WAIT on the port (a minute after clients that sent ``Connection: close``) do not keep
    uvicorn from binding, so they must not fail the check either; a listening socket still does.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise StackError(
                f"{host}:{port} is already in use: set STREAMREC_API_PORT to a free port"
            ) from None


def settings_for_run(settings: Settings, run_dir: Path) -> Settings:
    """Settings for one run of the stack.

    An embedded broker starts empty (it keeps messages in memory), so the state derived from
    Kafka (Faust tables, the trainer's event log, models) must start empty too: it goes into the
    run folder. With an external broker, state stays in ``settings.data_dir`` across runs.
    """
    return settings.with_data_dir(run_dir / "data") if settings.kafka_bootstrap is None else settings
