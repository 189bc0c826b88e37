"""The README's main job and `streamrec dev`: they run to the end and leave no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from streamrec.processes import free_port
from streamrec.redis_servers import RedisClusterServers
from streamrec.shared.cached_list import CachedList
from streamrec.shared.redis_connection import connect, get_many
from streamrec.shared.redis_keys import RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings
from streamrec.stack import Stack

from support import DATASETS, wait_for

pytestmark = pytest.mark.integration


def _isolated_env(data_dir: Path) -> dict[str, str]:
    """Environment with no external servers (so everything is embedded) and a private data dir.

    The data dir path doubles as a marker: every process the command starts inherits it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(STREAMREC_DATA_DIR=str(data_dir), STREAMREC_API_PORT=str(free_port()))
    return env


def _processes_carrying(marker: str) -> list[int]:
    """PIDs of live processes whose environment contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "State:\tZ" not in status:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@contextmanager
def _port_taken(port: int) -> Iterator[None]:
    """Something listens on 127.0.0.1:``port`` meanwhile (this, or whatever holds it already)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            pass  # taken already
        yield


def test_demo_prints_recommendations_and_stops_everything(tmp_path: Path) -> None:
    env = _isolated_env(tmp_path)
    del env["STREAMREC_API_PORT"]  # the demo's own choice, with the API's usual port 8000 taken
    with _port_taken(8000):
        result = subprocess.run(
            [sys.executable, "-m", "streamrec", "demo", "--users", "40", "--items", "40"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "ingest has taken all" in result.stdout
    assert "[4/4]" in result.stdout and "personal recommendations, model" in result.stdout
    assert "done: every process stopped." in result.stdout
    assert _processes_carrying(str(tmp_path)) == []


def _start_dev(services: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`streamrec dev --services SERVICES`, what it printed until it said it is running, and every
    line it printed (growing while it runs)."""
    dev = subprocess.Popen(
        [sys.executable, "-m", "streamrec", "dev", "--services", services],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C is what the tests send: a shell runs a background job (`make test &`) with SIGINT
        # ignored, and an ignored signal stays ignored in its children unless reset.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    output = []
    deadline = time.monotonic() + 120
    assert dev.stdout is not None
    while time.monotonic() < deadline:
        line = dev.stdout.readline()
        output.append(line)
        if "Ctrl-C stops everything" in line or not line:
            break
    # Keep reading what dev and its services print from then on: a full pipe would block their
    # writes, and a process blocked writing its shutdown log never stops (Ctrl-C would hang).
    shown = "".join(output)
    threading.Thread(target=lambda: output.extend(dev.stdout), daemon=True).start()  # type: ignore[arg-type]
    return dev, shown, output


def test_dev_stops_every_process_on_ctrl_c(tmp_path: Path) -> None:
    dev, shown, printed = _start_dev("ingest,scorer", _isolated_env(tmp_path))
    try:
        assert "Ctrl-C stops everything" in shown, shown
        assert len(_processes_carrying(str(tmp_path))) >= 4  # broker, redis, ingest, scorer
        dev.send_signal(signal.SIGINT)
        try:
            assert dev.wait(60) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("dev still running 60 s after Ctrl-C; it printed:\n" + "".join(printed)[-4000:])
    finally:
        if dev.poll() is None:
            dev.kill()
    time.sleep(0.5)
    assert _processes_carrying(str(tmp_path)) == []


def _shell_of(shown: str) -> dict[str, str]:
    """A second shell's environment: the dev env file it printed, sourced over a clean environment."""
    match = re.search(r"source (\S+streamrec\.env);", shown)
    assert match, shown
    exported = dict(re.findall(r"^export (\w+)=(.*)$", Path(match.group(1)).read_text(), re.MULTILINE))
    return {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}, **exported}


def _streamrec(shell: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamrec", *args], env=shell, capture_output=True, text=True, timeout=600
    )


def _users_served_by(shell: dict[str, str], users: set[str], version: str) -> int:
    """How many of ``users`` have a list in Redis from ``version``."""
    settings = Settings(redis_url=shell["STREAMREC_REDIS_URL"])
    keys = RedisKeys(settings.redis_prefix)
    with connect(settings) as store:
        raw_lists = get_many(store, [keys.recs(user) for user in sorted(users)])
    return sum(raw is not None and CachedList.decode(raw).model_version == version for raw in raw_lists)


def test_train_now_beside_a_running_trainer_service_has_it_train_once_on_every_event(
    tmp_path: Path,
) -> None:
    # The README's flow: `streamrec dev` in one shell, its env file sourced in another, events
    # replayed, then at once `streamrec train --once` beside the stack's own trainer, which keeps
    # its default schedule: the same events wake it too.
    env = _isolated_env(tmp_path)
    env.update(STREAMREC_EPOCHS="2", STREAMREC_GATE_TOLERANCE="1")  # the trainer service's settings
    dev, shown, _ = _start_dev("ingest,scorer,trainer", env)
    try:
        shell = _shell_of(shown)
        events = 20_000
        ratings = DATASETS / "ml-latest-small" / "ratings.csv"
        replayed = _streamrec(shell, "replay", str(ratings), "--limit", str(events))
        assert replayed.returncode == 0, replayed.stderr[-2000:]
        asked_at = time.time()
        trained = _streamrec(shell, "train", "--once")
        assert trained.returncode == 0, trained.stderr[-3000:]

        # The summary, and nothing before it (no log lines); the trainer service trained it.
        match = re.match(r"model (\S+) published to \S+: promoted, served now\n", trained.stdout)
        assert match, trained.stdout
        assert "trained by the trainer service (pid " in trained.stdout, trained.stdout
        version = match.group(1)
        registry = ModelRegistry(Path(shell["STREAMREC_MODEL_DIR"]))
        # Exactly one training on every event since the command started (the trainer's own cycle
        # on part of them may have run before it), and it is the model reported and served.
        on_everything = [
            v
            for v in registry.versions()
            if registry.manifest(v).created_at > asked_at and registry.manifest(v).data["events"] == events
        ]
        assert on_everything == [version], [registry.manifest(v).data for v in registry.versions()]
        listed = _streamrec(shell, "models", "list")
        assert listed.returncode == 0 and f"* {version}" in listed.stdout, listed.stdout + listed.stderr

        # Every replayed user's list comes from it, and it stays served: no event came since.
        users = set(
            pd.read_csv(ratings).sort_values("timestamp", kind="stable").head(events).userId.astype(str)
        )
        wait_for(
            lambda: _users_served_by(shell, users, version) == len(users),
            120,
            f"every replayed user's list to come from {version}",
        )
        assert registry.promoted_version() == version and registry.newest_version() == version

        # Asked again with nothing new: one more training, by the trainer service, reported as JSON.
        before = registry.versions()
        again = _streamrec(shell, "train", "--once", "--json")
        assert again.returncode == 0, again.stderr[-3000:]
        outcome = json.loads(again.stdout)
        assert outcome["trained_by"].startswith("the trainer service") and outcome["promoted"] is True
        assert [v for v in registry.versions() if v not in before] == [outcome["version"]]
        assert outcome["data"]["events"] == events and registry.promoted_version() == outcome["version"]

        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0
    finally:
        if dev.poll() is None:
            dev.kill()


def _commands_of(pids: list[int]) -> list[str]:
    """Each live process's command line, its arguments joined by spaces."""
    commands = []
    for pid in pids:
        try:
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return commands


def test_demo_and_dev_run_on_an_external_redis_cluster(
    tmp_path: Path, redis_cluster: RedisClusterServers
) -> None:
    # A site whose Redis is a cluster: STREAMREC_REDIS_URL alone points the demo and `streamrec dev`
    # at it, and no embedded Redis starts. The session's cluster is shared: a prefix of our own.
    env = _isolated_env(tmp_path)
    prefix = f"cli-{tmp_path.name}"
    env.update(STREAMREC_REDIS_URL=redis_cluster.url, STREAMREC_REDIS_PREFIX=prefix)
    settings = Settings(redis_url=redis_cluster.url, redis_prefix=prefix)
    keys = RedisKeys(prefix)

    demo = _streamrec(env, "demo", "--users", "40", "--items", "40")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert f"Redis {redis_cluster.url} " in demo.stdout
    assert "[4/4]" in demo.stdout and "personal recommendations, model" in demo.stdout
    with connect(settings) as store:
        lists = get_many(store, [keys.recs(f"u{i}") for i in range(40)])
    assert all(raw is not None and CachedList.decode(raw).source == "personal" for raw in lists)
    assert _processes_carrying(str(tmp_path)) == []

    dev, shown, printed = _start_dev("ingest,scorer", env)
    try:
        assert "Ctrl-C stops everything" in shown, shown
        assert not [c for c in _commands_of(_processes_carrying(str(tmp_path))) if "redis-server" in c]
        shell = _shell_of(shown)
        assert shell["STREAMREC_REDIS_URL"] == redis_cluster.url and shell["STREAMREC_REDIS_PREFIX"] == prefix
        ratings = DATASETS / "ml-latest-small" / "ratings.csv"
        replayed = _streamrec(shell, "replay", str(ratings), "--limit", "2000")
        assert replayed.returncode == 0, replayed.stderr[-2000:]
        # No model is served in this run: the first user gets the popular list, through the cluster.
        user = str(pd.read_csv(ratings, nrows=1).userId[0])
        wait_for(lambda: _streamrec(shell, "recommend", user).returncode == 0, 120, f"a list for user {user}")
        status = _streamrec(shell, "status")
        assert status.returncode == 0, status.stderr[-2000:]
        assert "lists in Redis:" in status.stdout, status.stdout
        with connect(settings) as store:
            assert store.get(keys.popular) is not None
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0, "".join(printed)[-4000:]
    finally:
        if dev.poll() is None:
            dev.kill()
    time.sleep(0.5)
    assert _processes_carrying(str(tmp_path)) == []


def _time_wait_connections(port: int) -> int:
    """Connections in TIME_WAIT whose local port is ``port`` (Linux /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "06":  # 06: TIME_WAIT
            count += 1
    return count


def _get_until_the_server_closes(host: str, port: int, path: str) -> bytes:
    """One ``Connection: close`` request (as urllib sends), read until the server closes first:
    the server's side of the connection then waits out TIME_WAIT on its port."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def test_a_stack_starts_right_after_another_served_on_the_same_port(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_port=free_port())
    with Stack(settings, tmp_path / "first", ("api",)):
        for _ in range(300):
            response = _get_until_the_server_closes(settings.api_host, settings.api_port, "/healthz")
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
    # The stopped API's closed connections wait out TIME_WAIT on its port, as after any real use.
    assert _time_wait_connections(settings.api_port) > 0
    health = f"http://{settings.api_host}:{settings.api_port}/healthz"
    with (
        Stack(settings, tmp_path / "second", ("api",)),
        urllib.request.urlopen(health, timeout=10) as response,
    ):
        assert response.status == 200
