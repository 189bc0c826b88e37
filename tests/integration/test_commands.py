"""The README's main job and `streamrec dev`: they run to the end and leave no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from streamrec.processes import free_port
from streamrec.shared.contracts import CachedList, RedisKeys
from streamrec.shared.registry import ModelRegistry
from streamrec.shared.settings import Settings

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


def test_demo_prints_recommendations_and_stops_everything(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "demo", "--users", "40", "--items", "40"],
        env=_isolated_env(tmp_path),
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


def test_train_now_beside_a_running_dev_stack_uses_every_event_and_the_served_registry(
    tmp_path: Path,
) -> None:
    # The README's flow: `streamrec dev` in one shell, its env file sourced in another, events
    # replayed, then at once `streamrec train --once` beside the stack's own trainer.
    env = _isolated_env(tmp_path)
    # The stack's trainer stays idle, so the model the scorer serves can only come from train --once.
    env.update(STREAMREC_TRAIN_TRIGGER="all", STREAMREC_TRAIN_MIN_NEW_EVENTS="100000000")
    dev, shown, _ = _start_dev("ingest,scorer,trainer", env)
    try:
        match = re.search(r"source (\S+streamrec\.env);", shown)
        assert match, shown
        exported = dict(re.findall(r"^export (\w+)=(.*)$", Path(match.group(1)).read_text(), re.MULTILINE))
        shell = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}, **exported}

        def streamrec(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "streamrec", *args],
                env={**shell, **extra},
                capture_output=True,
                text=True,
                timeout=600,
            )

        events = 20_000
        replayed = streamrec(
            "replay", str(DATASETS / "ml-latest-small" / "ratings.csv"), "--limit", str(events)
        )
        assert replayed.returncode == 0, replayed.stderr[-2000:]
        trained = streamrec("train", "--once", STREAMREC_EPOCHS="2", STREAMREC_GATE_TOLERANCE="1")
        assert trained.returncode == 0, trained.stderr[-3000:]

        registry = ModelRegistry(Path(exported["STREAMREC_MODEL_DIR"]))
        version = registry.promoted_version()
        assert version is not None and version in trained.stdout, trained.stdout
        assert registry.manifest(version).data["events"] == events  # none still in flight in ingest
        listed = streamrec("models", "list")
        assert listed.returncode == 0 and version in listed.stdout, listed.stdout + listed.stderr

        # The scorer serves it: a replayed user's list comes from that version.
        store = redis.Redis.from_url(exported["STREAMREC_REDIS_URL"])
        keys = RedisKeys(Settings().redis_prefix)

        def served() -> bool:
            for key in store.scan_iter(match=keys.recs("*"), count=1000):
                raw = store.get(key)
                if raw is not None and CachedList.decode(raw).model_version == version:
                    return True
            return False

        wait_for(served, 60, f"the scorer to serve {version}")
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
