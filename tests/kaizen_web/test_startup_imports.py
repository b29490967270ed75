"""What a process loads to start. SciPy alone cost about 0.7 s of CPU at every
start of a web server, a worker and a management command (experiments.stats and
its neighbours imported it at module level); it is imported where it is used, the
first time an experiment is looked at, so a process that never does never pays."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh interpreter each, as uvicorn loads the application and Celery its tasks.
STARTS = {
    "web server": "import kaizen_web.asgi",
    "worker": (
        "import django; django.setup(); from kaizen_web.celery import app; "
        "app.loader.import_default_modules()"
    ),
    "management commands": (
        "import django; django.setup(); from django.core.management import get_commands, load_command_class; "
        "[load_command_class(app, name) for name, app in get_commands().items() if not app.startswith('django')]"
    ),
}


@pytest.mark.parametrize("start", STARTS, ids=list(STARTS))
def test_a_process_starts_without_scipy(start):
    code = f"{STARTS[start]}; import sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_scipy_comes_when_an_experiment_is_looked_at():
    code = (
        "import django; django.setup(); import sys; from experiments import stats; "
        "before = 'scipy' in sys.modules; stats.obf_spending(0.5); print(before, 'scipy.stats' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "False True"
