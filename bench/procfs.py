"""What /proc says about the processes a benchmark measures: CPU time, memory, and CPU time the
host gave other guests. Each reader returns a sentinel (-1 or 0) where there is no /proc."""

from __future__ import annotations

import os


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process so far, from /proc; -1 where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    # Fields 14 and 15 of proc(5) (utime, stime), counted after the ")" that ends the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stolen_seconds() -> float:
    """CPU time the hypervisor gave other guests while this machine's CPUs wanted to run, summed over
    its CPUs (the ``steal`` column of /proc/stat); -1 where there is no /proc. A shared host that
    steals a good part of the cores makes every latency worse: the figure says when it did."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return -1.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int, field_name: str) -> float:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM) in KiB; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0
