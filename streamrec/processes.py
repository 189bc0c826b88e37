"""Child processes that never outlive their parent: spawned in their own session, logged to a
file, told to die with the parent (Linux PR_SET_PDEATHSIG), and stopped TERM-then-KILL."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A server or service of the stack failed to start or keeps dying; the message says which."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Not Linux: no libc.so.6, and the parent's explicit stop() still applies.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildProcess:
    """A named child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """Process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.alive():
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # The group may still hold grandchildren even after the leader exited.
        _signal_group(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode

    def kill(self) -> float:
        """SIGKILL the process group, as a crash would; wait for it. Returns the monotonic time of the kill."""
        _signal_group(self.popen.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self.popen.wait(10)
        return killed_at

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of the log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all(children: Iterable[ChildProcess], timeout: float) -> None:
    """Stop several processes at once: SIGTERM to all, then wait for each within one shared
    ``timeout`` (SIGKILL to any still running after it)."""
    children = list(children)
    for child in children:
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        child.stop(max(deadline - time.monotonic(), 0.1))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def spawn(name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> ChildProcess:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return ChildProcess(name, popen, log_path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, child: ChildProcess | None = None) -> None:
    """Block until ``host:port`` accepts connections; raise StackError on timeout or child death."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise StackError(f"{child.name} exited early:\n{child.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise StackError(f"nothing listens on {host}:{port} after {timeout:.0f}s")
