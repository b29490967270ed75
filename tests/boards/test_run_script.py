"""``make run``'s script on a bare machine: SQLite in its var dir, the embedded
Redis, the demo, the web server, a worker and beat; Ctrl-C stops all of it.

These start the whole product, which does not depend on the database of the
test pass, so they run in the SQLite pass only.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from tests.live import LiveProcess, free_port, log_path_for, register, wait_for

pytestmark = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="runs the bare-machine setup once, in the SQLite pass"
)

STARTUP = 180.0
STOP = 40.0


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
def start_run(request, tmp_path):
    """Start scripts/run.py as on a bare machine; returns (process, port)."""
    started: list[LiveProcess] = []

    def start(**extra: str) -> tuple[LiveProcess, int]:
        port = int(extra.pop("PORT", 0)) or free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_QUEUE", "HOST", "KAIZEN_REDIS_PORT"}
        }
        env.update({"KAIZEN_VAR_DIR": str(tmp_path / "var"), "PORT": str(port), **extra})
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
    page = opener.open(f"{base_url}/accounts/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "the login page has no CSRF token"
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
    ).encode()
    response = opener.open(f"{base_url}/accounts/login/", data=form, timeout=10)
    return urllib.parse.urlsplit(response.geturl()).path


def test_it_serves_the_demo_and_ctrl_c_stops_everything(start_run):
    run, port = start_run()
    wait_for("the banner", lambda: "Kaizen is running" in run.log_text(), timeout=STARTUP, process=run)
    log = run.log_text()
    assert f"http://127.0.0.1:{port}/" in log
    assert "demo / demo" in log
    redis_port = int(re.search(r"embedded Redis .* on 127\.0\.0\.1:(\d+)", log).group(1))
    assert answers(redis_port)

    landed = log_in(f"http://127.0.0.1:{port}", "demo", "demo")
    assert landed != "/accounts/login/", "the demo login was refused"

    children = children_of(run.proc.pid)
    assert len(children) >= 4  # redis, web, worker, beat
    # What a terminal does on Ctrl-C; the children sit in their own process
    # groups, so only run.py gets it and must stop them itself.
    os.kill(run.proc.pid, signal.SIGINT)
    wait_for("run.py to exit", lambda: not run.alive, timeout=STOP)
    assert run.returncode == 0, run.log_tail()
    assert [pid for pid in children if is_running(pid)] == []
    assert not answers(port)
    assert not answers(redis_port)


def test_it_stops_everything_when_a_child_dies(start_run):
    run, _ = start_run()
    wait_for("the banner", lambda: "Kaizen is running" in run.log_text(), timeout=STARTUP, process=run)
    children = children_of(run.proc.pid)
    worker = next(
        pid for pid in children if " celery " in command_line(pid) and " worker " in command_line(pid)
    )
    os.kill(worker, signal.SIGKILL)
    wait_for("run.py to exit", lambda: not run.alive, timeout=STOP)
    assert run.returncode == 1
    assert "worker (the Celery worker) was killed by SIGKILL" in run.log_text()
    assert [pid for pid in children if is_running(pid)] == []


def test_it_refuses_a_port_in_use(start_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        run, port = start_run(PORT=str(busy.getsockname()[1]))
        wait_for("run.py to exit", lambda: not run.alive, timeout=STOP)
    assert run.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in run.log_text()
    assert "starting embedded Redis" not in run.log_text()


def test_it_refuses_a_public_host_with_the_well_known_demo_password(start_run):
    run, _ = start_run(HOST="0.0.0.0")
    wait_for("run.py to exit", lambda: not run.alive, timeout=STOP)
    assert run.returncode == 1
    assert "set KAIZEN_DEMO_PASSWORD" in run.log_text()
    assert "starting embedded Redis" not in run.log_text()
