"""``make run``'s script on a bare machine: SQLite in its var dir, the embedded
Redis, the demo, the web server, a worker and beat; Ctrl-C stops all of it.

These start the whole product, which does not depend on the database of the
test pass, so they run in the SQLite pass only.
"""

from __future__ import annotations

import functools
import http.cookiejar
import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from tests.live import LiveProcess, free_port, log_path_for, register, wait_for

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "sqlite", reason="runs the bare-machine setup once, in the SQLite pass"
    ),
    pytest.mark.long_running,
]

STARTUP = 180.0
STOP = 40.0
BASE_DIR = Path(__file__).resolve().parents[2]
BANNER = "Kaizen is running"


@functools.cache
def load_run_module():
    """scripts/run.py as a module, for its parts that need no processes."""
    spec = importlib.util.spec_from_file_location("kaizen_run_script", BASE_DIR / "scripts" / "run.py")
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while it loads.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """Every live descendant of ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: split after it.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def var(tmp_path) -> Path:
    """The var dir every run.py a test starts shares (KAIZEN_VAR_DIR)."""
    return tmp_path / "var"


@pytest.fixture
def start_run(request, var):
    """Start scripts/run.py as on a bare machine; returns (process, port)."""
    started: list[LiveProcess] = []

    def start(**extra: str) -> tuple[LiveProcess, int]:
        port = int(extra.pop("PORT", 0)) or free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_QUEUE", "HOST", "KAIZEN_REDIS_PORT"}
        }
        env.update({"KAIZEN_VAR_DIR": str(var), "PORT": str(port), **extra})
        env.pop("KAIZEN_DEMO_PASSWORD", None)
        process = LiveProcess(
            "run", [sys.executable, "scripts/run.py"], env, log_path_for(request, f"run-{len(started)}")
        )
        register(request, process)
        started.append(process)
        return process, port

    yield start
    for process in started:
        # A failed test must not leave the demo running: SIGTERM lets run.py
        # stop its children; stop() escalates if it hangs.
        if process.alive:
            os.kill(process.proc.pid, signal.SIGTERM)
        process.stop()


def log_in(base_url: str, username: str, password: str) -> str:
    """Log in through the login form; returns the path the browser lands on."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{base_url}/accounts/login/", timeout=60).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "the login page has no CSRF token"
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
    ).encode()
    response = opener.open(f"{base_url}/accounts/login/", data=form, timeout=60)
    return urllib.parse.urlsplit(response.geturl()).path


def embedded_redis_port(log: str) -> int:
    return int(re.search(r"starting Redis \(embedded, 127\.0\.0\.1:(\d+)\)\.\.\. ok", log).group(1))


def second_terminal_redis_url(var: Path) -> str:
    """settings.REDIS_URL as `manage.py shell` sees it in another terminal, where
    REDIS_URL is not set."""
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "REDIS_URL_FILE", "DATABASE_URL"}}
    env.update({"KAIZEN_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "kaizen_web.settings"})
    result = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.REDIS_URL)"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# One start of the whole product serves the checks of a calm terminal and of a
# clean stop: each start costs some 30-50 s of the test pass.
@pytest.mark.redis
def test_it_serves_the_demo_calmly_and_ctrl_c_stops_everything(start_run, var):
    # Two worker processes (PostgreSQL's default on a machine of two cores or more).
    run, port = start_run(KAIZEN_WORKER_PROCESSES="2")
    wait_for("the banner", lambda: BANNER in run.log_text(), timeout=STARTUP, process=run)
    logs = var / "log"
    # The agents at work: tasks ran, and their lines went to the worker's log.
    wait_for(
        "a run in the worker's log",
        lambda: "boards.tasks.run_task" in (logs / "worker.log").read_text(errors="replace"),
        timeout=STARTUP,
        process=run,
    )

    shown = [line for line in run.log_text().splitlines() if line.strip()]
    # Only our own lines, and the odd warning a process logged: not the worker's stream.
    ours = ("kaizen | ", "+-", "|  ", "Logs: ")
    assert [
        line for line in shown if not line.startswith(ours) and not re.search("WARNING|ERROR", line)
    ] == []
    # A few progress lines, then the box with the URL and the login, then where the logs are.
    assert [line for line in shown if line.endswith("... ok")] == [
        f"kaizen | starting Redis (embedded, 127.0.0.1:{embedded_redis_port(run.log_text())})... ok",
        "kaizen | migrating the database... ok",
        "kaizen | loading the demo line (examples/demo.yaml)... ok",
        "kaizen | preparing the demo user... ok",
        "kaizen | starting the web server, the worker and the scheduler... ok",
    ]
    logs_line = shown.index(
        f"Logs: {logs}/ (tail -f {logs}/worker.log); make run ARGS=--verbose to see them here"
    )
    box = shown[logs_line - 10 : logs_line]
    assert box[0].startswith("+-") and box[-1].startswith("+-")
    assert f"Kaizen is running:  http://127.0.0.1:{port}/" in box[1]
    assert "Log in as:          demo / demo" in box[2]
    # The demo's reviewer load is part of the demo, and says it is simulated.
    assert any("Reviewer:           simulated, one decision every 15 s" in line for line in box)
    # The demo's 20 threads (SQLite), shared by the two processes.
    assert any("Worker:             2 processes of 10 threads" in line for line in box)
    # Both workers were ready before the banner, each a Celery node of its own name.
    assert " ready." in (logs / "worker.log").read_text(errors="replace")
    second = (logs / "worker-2.log").read_text(errors="replace")
    assert "worker-2@" in second and " ready." in second
    assert shown[logs_line - 11] == "kaizen | starting the web server, the worker and the scheduler... ok"
    for name in ("redis", "migrate", "config", "user", "web", "worker", "beat"):
        assert (logs / f"{name}.log").exists(), name
    assert "Operations to perform" in (logs / "migrate.log").read_text()

    # It serves the demo, and Ctrl-C stops all of it.
    log = run.log_text()
    assert f"http://127.0.0.1:{port}/" in log
    assert "demo / demo" in log
    redis_port = embedded_redis_port(log)
    assert answers(redis_port)

    landed = log_in(f"http://127.0.0.1:{port}", "demo", "demo")
    assert landed != "/accounts/login/", "the demo login was refused"

    # A command from a second terminal (no REDIS_URL) finds the embedded Redis.
    run_file = var / "run" / "redis.json"
    assert json.loads(run_file.read_text())["url"] == f"redis://127.0.0.1:{redis_port}/0"
    assert second_terminal_redis_url(var) == f"redis://127.0.0.1:{redis_port}/0"

    children = children_of(run.proc.pid)
    assert len(children) >= 5  # redis, web, two workers, beat
    # What a terminal does on Ctrl-C; the children sit in their own process
    # groups, so only run.py gets it and must stop them itself.
    os.kill(run.proc.pid, signal.SIGINT)
    wait_for("run.py to exit", lambda: not run.alive, timeout=STOP)
    assert run.returncode == 0, run.log_tail()
    assert [pid for pid in children if is_running(pid)] == []
    assert not answers(port)
    assert not answers(redis_port)
    assert not run_file.exists()


@pytest.mark.redis
def test_verbose_shows_every_process_here_too(start_run):
    run, _ = start_run(VERBOSE="1")
    wait_for("the banner", lambda: BANNER in run.log_text(), timeout=STARTUP, process=run)

    wait_for(
        "the worker's lines in the terminal",
        lambda: re.search(r"^worker \| .*boards\.tasks\.", run.log_text(), re.MULTILINE) is not None,
        timeout=STARTUP,
        process=run,
    )
    assert re.search(r"^migrate \| .*Operations to perform", run.log_text(), re.MULTILINE)
    assert "they are shown here too (--verbose)" in run.log_text()


@pytest.mark.redis
def test_a_failed_step_shows_its_output_in_the_terminal(start_run, tmp_path):
    run, _ = start_run(DATABASE_URL=f"sqlite:///{tmp_path / 'no-such-dir' / 'kaizen.sqlite3'}")
    wait_for("run.py to exit", lambda: not run.alive, timeout=STARTUP)

    log = run.log_text()
    assert run.returncode == 1
    assert "kaizen | migrating the database... failed" in log
    assert re.search(r"^migrate \| .*unable to open database file", log, re.MULTILINE)
    assert "migrate failed with exit code 1 (its output is in" in log


# The promise: Ctrl-C stops everything within 5 s even while model calls
# are in flight. This is a stated behaviour, not a speed benchmark; the assert
# allows 6 s so a loaded machine's slower process start-up and reaping do not
# fail it, while a supervisor that waits for the calls (30 s and more here, as
# the warm shutdown did) or for its old 10 s timeout still does.
STOP_PROMISE = 6.0


def held_leases(database: Path) -> dict[int, str]:
    """Task id -> lease token of every task In progress, read from the demo's SQLite file."""
    with sqlite3.connect(database, timeout=30) as db:
        rows = db.execute(
            "SELECT id, lease_token FROM boards_task WHERE status = 'running' AND lease_token IS NOT NULL"
        ).fetchall()
    return {task_id: token for task_id, token in rows}


@pytest.mark.redis
def test_ctrl_c_stops_everything_within_5_s_while_model_calls_are_in_flight(start_run, var):
    # Simulated calls of a minute or more, and short leases so the restart below
    # need not wait a minute for the dead runs' leases to run out.
    slow = {"KAIZEN_SIMULATED_LATENCY_SCALE": "60", "KAIZEN_LEASE_SECONDS": "3"}
    run, _ = start_run(**slow)
    wait_for("the banner", lambda: BANNER in run.log_text(), timeout=STARTUP, process=run)
    database = var / "kaizen.sqlite3"
    wait_for("model calls in flight", lambda: held_leases(database), timeout=STARTUP, process=run)
    in_flight = held_leases(database)
    children = children_of(run.proc.pid)

    started = time.monotonic()
    os.kill(run.proc.pid, signal.SIGINT)
    wait_for(
        "run.py and every child to exit",
        lambda: not run.alive and not [pid for pid in children if is_running(pid)],
        timeout=STOP,
    )
    took = time.monotonic() - started

    assert run.returncode == 0, run.log_tail()
    assert took < STOP_PROMISE, f"stopping took {took:.1f} s"

    # A fresh start: the runs cut short come back through their leases, so no
    # task stays In progress on a lease nobody holds.
    again, _ = start_run(**slow)
    wait_for("the banner", lambda: BANNER in again.log_text(), timeout=STARTUP, process=again)

    def cut_short_runs_still_held() -> dict[int, str]:
        now = held_leases(database)
        return {task_id: token for task_id, token in in_flight.items() if now.get(task_id) == token}

    wait_for(
        "the cut-short runs to come back", lambda: not cut_short_runs_still_held(), timeout=60, process=again
    )
    with sqlite3.connect(database) as db:
        placeholders = ",".join("?" * len(in_flight))
        statuses = dict(
            db.execute(f"SELECT id, status FROM boards_task WHERE id IN ({placeholders})", list(in_flight))
        )
    assert set(statuses) == set(in_flight), "a task in flight at Ctrl-C was lost"


# --- the parts that need no processes ---------------------------------------------


def test_a_log_file_starts_empty_and_is_rotated_by_size(tmp_path):
    run_script = load_run_module()
    path = tmp_path / "worker.log"
    path.write_bytes(b"the last run's lines\n")

    log = run_script.LogFile(path, max_bytes=100)
    for index in range(30):
        log.write(f"line {index:02d} of the worker\n".encode())
    log.close()

    current, previous = path.read_bytes(), (tmp_path / "worker.log.1").read_bytes()
    assert b"the last run" not in current + previous
    assert len(current) <= 100 and len(previous) <= 100
    assert current.endswith(b"line 29 of the worker\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker.log", "worker.log.1"]


class FakeTerminal:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.verbose = False

    def line(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.parametrize(
    "line, shown",
    [
        ("[2026-01-01 10:00:00,000: WARNING/MainProcess] run went past KAIZEN_RUN_TIMEOUT_SECONDS", True),
        ("[2026-01-01 10:00:00,000: ERROR/MainProcess] Task boards.tasks.run_tasks raised", True),
        ("[2026-01-01 10:00:00,000: INFO/MainProcess] Task boards.tasks.run_task succeeded", False),
        ("ERROR:    Exception in ASGI application", True),
        ("INFO:     Uvicorn running on http://127.0.0.1:8000", False),
        ("2026-01-01 10:00:00,000 WARNING django.request: Not Found: /nope", True),
        ("2026-01-01 10:00:00,000 INFO boards.broadcast: sent", False),
        ("    . logfile -> [stderr]@%WARNING", False),
    ],
)
def test_warnings_and_errors_reach_the_terminal(tmp_path, line, shown):
    run_script = load_run_module()
    terminal = FakeTerminal()
    forwarder = run_script.WarningForwarder(terminal, "worker", run_script.LogFile(tmp_path / "w.log"))

    forwarder.offer(line)

    assert terminal.lines == ([f"worker | {line}"] if shown else [])


def test_warnings_are_rate_limited_and_the_rest_counted(tmp_path):
    run_script = load_run_module()
    terminal = FakeTerminal()
    log = run_script.LogFile(tmp_path / "worker.log")
    warning = "[2026-01-01 10:00:00,000: WARNING/MainProcess] breaker open"
    held_back = run_script.WarningForwarder(terminal, "worker", log, interval=3600)

    for _ in range(50):
        held_back.offer(warning)
    held_back.flush()  # the interval is not over: nothing more yet

    assert terminal.lines == [f"worker | {warning}"]

    now = [1000.0]
    clocked = run_script.WarningForwarder(terminal, "beat", log, interval=10, clock=lambda: now[0])
    clocked.offer(warning)
    for _ in range(3):
        now[0] += 1
        clocked.offer(warning)
    now[0] += 10  # the interval is over: the count is shown, once
    clocked.flush()
    clocked.flush()
    assert terminal.lines[-2:] == [
        f"beat   | {warning}",
        f"beat   | (3 more warnings or errors: see {log.path})",
    ]


def test_the_embedded_redis_takes_a_free_port_when_its_own_is_taken(tmp_path, monkeypatch):
    run_script = load_run_module()
    monkeypatch.delenv("KAIZEN_REDIS_PORT", raising=False)
    sup = run_script.Supervisor(run_script.Terminal(verbose=False), tmp_path / "log")
    with socket.socket() as taken:
        # Listening, as a server there would: a port an earlier test's Redis left
        # in TIME_WAIT refuses a plain bind, yet a server (SO_REUSEADDR) may take it.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            taken.bind(("127.0.0.1", run_script.EMBEDDED_REDIS_PORT))
            taken.listen()
        except OSError:
            pass  # something listens there already: as good for this test
        try:
            url = run_script.start_embedded_redis(sup, tmp_path)
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            run_file = tmp_path / "run" / "redis.json"

            assert port != run_script.EMBEDDED_REDIS_PORT
            assert answers(port)
            assert json.loads(run_file.read_text()) == {"url": url, "pid": sup.children[0].proc.pid}
        finally:
            sup.stop_all()
    assert not answers(port)
    assert not run_file.exists()
    assert "Ready to accept connections" in (tmp_path / "log" / "redis.log").read_text()


def test_the_help_says_how_to_see_the_logs():
    result = subprocess.run(
        [sys.executable, "scripts/run.py", "--help"], cwd=BASE_DIR, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0
    assert "--verbose" in result.stdout
    assert "make run ARGS=--verbose" in result.stdout
    assert "rotated at 10 MB" in result.stdout


@pytest.mark.redis
def test_it_stops_everything_when_a_child_dies(start_run):
    run, _ = start_run()
    wait_for("the banner", lambda: BANNER in run.log_text(), timeout=STARTUP, process=run)
    children = children_of(run.proc.pid)
    worker = next(
        pid for pid in children if " celery " in command_line(pid) and " worker " in command_line(pid)
    )
    os.kill(worker, signal.SIGKILL)
    wait_for("run.py to exit", lambda: not run.alive, timeout=STOP)
    assert run.returncode == 1
    assert "worker (the Celery worker) was killed by SIGKILL" in run.log_text()
    assert [pid for pid in children if is_running(pid)] == []


@pytest.mark.redis
def test_it_refuses_a_port_in_use(start_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        run, port = start_run(PORT=str(busy.getsockname()[1]))
        wait_for("run.py to exit", lambda: not run.alive, timeout=STOP)
    assert run.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in run.log_text()
    assert "starting Redis" not in run.log_text()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("env", "message"),
    [
        # A public host with the well-known demo password.
        ({"HOST": "0.0.0.0"}, "set KAIZEN_DEMO_PASSWORD"),
        ({"KAIZEN_WORKER_PROCESSES": "0"}, "KAIZEN_WORKER_PROCESSES must be between 1 and 64, got 0"),
    ],
)
def test_it_refuses_bad_settings_before_starting_anything(start_run, env, message):
    run, _ = start_run(**env)
    wait_for("run.py to exit", lambda: not run.alive, timeout=STOP)
    assert run.returncode == 1
    assert message in run.log_text()
    assert "starting Redis" not in run.log_text()


def test_worker_processes_default_to_one_per_core_on_postgresql_and_one_on_sqlite(monkeypatch):
    run_script = load_run_module()
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert run_script.default_worker_processes(None) == 1
    assert run_script.default_worker_processes("sqlite:///var/kaizen.sqlite3") == 1
    assert run_script.default_worker_processes("postgres://db/kaizen") == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert run_script.default_worker_processes("postgres://db/kaizen") == 4
    assert run_script.worker_names(3) == ["worker", "worker-2", "worker-3"]


def test_worker_processes_share_the_threads_and_the_database_connections():
    run_script = load_run_module()
    env = {"DATABASE_URL": "postgres://db/kaizen"}
    assert run_script.worker_share(200, 1, env) == (200, env)
    assert run_script.worker_share(200, 2, env) == (100, {**env, "DB_POOL_MAX": "20"})
    # Four workers, the web server, the embedder and beat within PostgreSQL's 100.
    assert run_script.worker_share(200, 4, env) == (50, {**env, "DB_POOL_MAX": "10"})
    assert run_script.worker_share(3, 4, {**env, "DB_POOL_MAX": "8"}) == (1, {**env, "DB_POOL_MAX": "8"})
