"""Processes as Linux /proc shows them: their CPU time, and finding them by name
or as a tree. What the benchmarks measure with (bench/run.py, bench/cascade.py);
starting and stopping processes is kaizen_web.processes' job."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (uvicorn --workers forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def memory_kb(pids: list[int]) -> dict[str, int]:
    """Resident memory of these processes, summed (kB, Linux /proc/<pid>/status):
    ``rss`` in all, ``anon`` of it the heap and stacks, ``file`` the mapped
    files (shared libraries, counted in full for each process), ``hwm`` the sum
    of each process's peak, and ``threads``."""
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "VmHWM:": "hwm", "Threads:": "threads"}
    total = dict.fromkeys(keys.values(), 0)
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0] in keys:
                total[keys[parts[0]]] += int(parts[1])
    return total
