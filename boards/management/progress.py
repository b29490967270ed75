"""A progress bar for management commands (import_tasks, flow_fold)."""

from __future__ import annotations

import time

from django.core.management.base import OutputWrapper


class Progress:
    """``done/total`` on ``stream``: a bar redrawn in place on a terminal, else a
    line at each tenth (a log or a pipe would fill with redraws)."""

    WIDTH = 30

    def __init__(self, stream: OutputWrapper, total: int, label: str) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.tty = stream.isatty()
        self.next_tenth = 1
        self.started = time.monotonic()

    def __call__(self, done: int) -> None:
        if self.tty:
            filled = self.WIDTH * done // self.total
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            ending = "\n" if done >= self.total else ""
            self.stream.write(f"\r{self.label} [{bar}] {done:,}/{self.total:,}", ending=ending)
            self.stream.flush()
            return
        while self.next_tenth <= 10 and done * 10 >= self.next_tenth * self.total:
            self.stream.write(f"{self.label}: {done:,}/{self.total:,} ({self.next_tenth * 10}%)")
            self.stream.flush()
            self.next_tenth += 1
