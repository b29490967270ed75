"""Run a Python module with a stack sampler beside it, for the bench only:
``python -m bench.sampled OUT.json uvicorn kaizen_web.asgi:application ...``.

Every ``KAIZEN_BENCH_SAMPLE_MS`` (10) a thread of its own looks at every other
thread's stack (innermost 40 frames) and adds to it, under ``cpu``, the CPU
time the thread used since the last look (microseconds, from
/proc/self/task/<tid>/schedstat), and under ``waiting`` one sample if it used
none. Every 5 seconds, and at exit, the counts go to OUT.json. py-spy would do this from the
outside; it is not installed here, and cProfile sees one thread at a time and
slows everything several times, which a sampler does not.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
import time
from collections import Counter
from pathlib import Path


def _cpu_ns(tid: int) -> int:
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0


def _frames(frame) -> str:
    parts = []
    while frame is not None and len(parts) < 40:
        code = frame.f_code
        parts.append(f"{code.co_filename.rsplit('site-packages/', 1)[-1]}:{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return ";".join(reversed(parts))


class Sampler:
    def __init__(self, path: str, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.counts: dict[str, Counter] = {"cpu": Counter(), "waiting": Counter()}
        self.samples = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        me = threading.get_ident()
        last_dump = time.monotonic()
        seen: dict[int, int] = {}
        while True:
            time.sleep(self.interval)
            natives = {t.ident: t.native_id for t in threading.enumerate()}
            frames = sys._current_frames()
            with self.lock:
                self.samples += 1
                for ident, frame in frames.items():
                    if ident == me:
                        continue
                    native = natives.get(ident)
                    if native is None:
                        continue
                    now = _cpu_ns(native)
                    used = now - seen.get(native, now)
                    seen[native] = now
                    if used > 0:
                        self.counts["cpu"][_frames(frame)] += used // 1000
                    else:
                        self.counts["waiting"][_frames(frame)] += 1
            if time.monotonic() - last_dump > 5:
                self.dump()
                last_dump = time.monotonic()

    def dump(self) -> None:
        with self.lock:
            data = {
                "pid": os.getpid(),
                "samples": self.samples,
                "interval_s": self.interval,
                **{label: dict(c.most_common(3000)) for label, c in self.counts.items()},
            }
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)


def main() -> None:
    path, module, *rest = sys.argv[1:]
    sampler = Sampler(path, float(os.environ.get("KAIZEN_BENCH_SAMPLE_MS", "10")) / 1000)
    threading.Thread(target=sampler.run, name="bench-sampler", daemon=True).start()
    atexit.register(sampler.dump)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
