"""Processes we start and wait for, the same way in ``make run`` (scripts/run.py),
the tests' live servers and workers (tests/live.py) and the benchmarks
(bench/run.py): a free port, whether a port answers, waiting for a condition,
and children in process groups of their own, stopped group and all.

Standard library only, and nothing from Django: scripts/run.py loads this file
before anything is set up (by its path, as importing the ``kaizen_web`` package
would load the Celery app, and Django with it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not bind ``host:port`` now (one, as servers do, that
    may take a port an earlier server left in TIME_WAIT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def accepts_connections(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """Whether something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    watch: Callable[[], None] | None = None,
    pause: Callable[[float], object] = time.sleep,
) -> bool:
    """Check ``check`` every ``interval`` seconds until it holds (True) or
    ``timeout`` seconds have passed (False). ``watch`` runs after each check that
    failed and may raise to end the wait (a child died, a stop was asked for);
    ``pause`` waits between checks (an Event's wait, to wake up for a stop)."""
    deadline = time.monotonic() + timeout
    while not check():
        if watch is not None:
            watch()
        if time.monotonic() > deadline:
            return False
        pause(interval)
    return True


def start_in_group(
    argv: list[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str],
    stdout: int | IO,
) -> subprocess.Popen:
    """Start ``argv`` in a process group of its own, stdin closed and stderr with
    stdout: a Ctrl-C in the terminal reaches only us, and signal_group reaches
    its children too."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        process_group=0,
    )


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the process group ``proc`` leads (see start_in_group)."""
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass  # already gone, with its whole group


def stop_groups(procs: Iterable[subprocess.Popen], *, grace: float) -> None:
    """SIGTERM each process's group, give them ``grace`` seconds together to
    exit, then SIGKILL whatever is left of each group (grandchildren included)
    and reap them."""
    procs = list(procs)
    for proc in procs:
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        signal_group(proc, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def lowest_priority() -> list[str]:
    """A command prefix that runs a process only on CPU nobody else wants: Linux's
    SCHED_IDLE policy (``chrt --idle 0``) where chrt exists, and nice 19 (which
    also lowers its I/O priority)."""
    prefix = ["chrt", "--idle", "0"] if shutil.which("chrt") else []
    return [*prefix, "nice", "-n", "19"] if shutil.which("nice") else prefix
