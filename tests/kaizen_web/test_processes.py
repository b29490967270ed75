"""kaizen_web.processes: the process helpers make run, the tests and the benchmarks share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kaizen_web import processes

BASE_DIR = Path(__file__).resolve().parents[2]


def test_make_run_loads_them_without_django_or_celery():
    # scripts/run.py runs before anything is set up; -X importtime lists every import.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "scripts/run.py", "--help"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not {name for name in imported if name.split(".")[0] in {"django", "celery", "kaizen_web"}}


def test_stopping_a_group_takes_its_grandchildren_with_it(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # A shell that starts a sleeper in the background and waits on it.
    proc = processes.start_in_group(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
    )
    assert processes.wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60)
    grandchild = int(pid_file.read_text())

    processes.stop_groups([proc], grace=5)

    assert proc.returncode is not None
    # Killed, then reaped by whoever inherited it: until then it may linger as a zombie.
    assert processes.wait_until(lambda: _gone(grandchild), timeout=60)


def test_waiting_gives_up_after_its_timeout():
    checks = []

    assert processes.wait_until(lambda: checks.append(1) and False, timeout=0.3, interval=0.05) is False
    assert len(checks) >= 2


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
