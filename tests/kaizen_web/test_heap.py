"""kaizen_web.heap: a server process, once loaded, leaves its code out of the
garbage collector's work and collects less often."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from kaizen_web import heap


@pytest.fixture
def restored_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_freezes_what_is_loaded_and_sets_the_thresholds(settings, restored_gc):
    settings.KAIZEN_GC_THRESHOLDS = ["5000", "7", "9"]
    gc.unfreeze()
    kept = [{"made": "before"}]  # a container, tracked by the collector

    heap.settle()

    assert gc.get_threshold() == (5000, 7, 9)
    assert gc.get_freeze_count() > 1000
    # Frozen: in no generation the collector walks.
    assert not any(o is kept for generation in range(3) for o in gc.get_objects(generation=generation))


def test_no_thresholds_keep_pythons_own(settings, restored_gc):
    settings.KAIZEN_GC_THRESHOLDS = []
    gc.set_threshold(700, 10, 10)
    heap.settle()
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("raw", [["20000", "50"], ["a", "b", "c"], ["20000", "0", "10"]])
def test_bad_thresholds_are_refused_by_name(settings, raw):
    settings.KAIZEN_GC_THRESHOLDS = raw
    with pytest.raises(ImproperlyConfigured, match="KAIZEN_GC_THRESHOLDS must be three positive integers"):
        heap.thresholds()


def test_the_web_server_settles_once_loaded():
    # A fresh interpreter, as uvicorn loads the application.
    code = "import gc, kaizen_web.asgi; print(gc.get_threshold(), gc.get_freeze_count() > 10000)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "(20000, 50, 100) True"
