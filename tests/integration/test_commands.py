"""The README's main job and `streamrec dev`: they run to the end and leave no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrec.processes import free_port

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
    assert "[4/4]" in result.stdout and "personal recommendations, model" in result.stdout
    assert "done: every process stopped." in result.stdout
    assert _processes_carrying(str(tmp_path)) == []


def test_dev_stops_every_process_on_ctrl_c(tmp_path: Path) -> None:
    dev = subprocess.Popen(
        [sys.executable, "-m", "streamrec", "dev", "--services", "ingest,scorer"],
        env=_isolated_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = []
        deadline = time.monotonic() + 120
        assert dev.stdout is not None
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            output.append(line)
            if "Ctrl-C stops everything" in line or not line:
                break
        assert "Ctrl-C stops everything" in "".join(output), "".join(output)
        assert len(_processes_carrying(str(tmp_path))) >= 4  # broker, redis, ingest, scorer
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
    time.sleep(0.5)
    assert _processes_carrying(str(tmp_path)) == []
