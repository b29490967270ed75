"""What drawing a board's cards costs (issue 15): the CPU of one live update's
context, every card drawn anew (as on a busy line, where nearly every card an
update carries is new) and every card kept (a quiet board), and a card alone.

In-process, on a scratch SQLite database in a temporary directory: a board of
the line's bench shape with 60 tasks in Ready, 60 running and 60 done (150 cards
drawn: KAIZEN_COLUMN_CARD_LIMIT a column). Prints only; nothing is recorded.

Usage: python bench/cards.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=30, help="renders of each kind (default 30)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kaizen-bench-cards-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "kaizen_web.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'cards.sqlite3'}"
    os.environ["KAIZEN_VAR_DIR"] = str(scratch / "var")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command
    from django.template import engines
    from django.utils import timezone

    from bench.fixtures import line_board
    from boards import fragments
    from boards.models import Task

    call_command("migrate", verbosity=0)
    board, agent = line_board("cards", wip=200)
    columns = {c.role: c for c in board.columns.all()}
    now = timezone.now()
    tasks = []
    for i in range(60):
        tasks.append(
            Task(board=board, column=columns["ready"], status="ready", title=f"bench task {i}", position=i)
        )
        # A running card and a done one, as the line leaves them (the done one with its ledger line).
        run = {"board": board, "agent": agent, "attempts": 1, "position": i}
        started = now - timedelta(seconds=i + 3)
        done = {"finished_at": now - timedelta(seconds=i), "cost": 0.00012, "model_calls": 1}
        done |= {"accepted_tier": 1, "confidence": 0.93}
        for status, role, extra in (("running", "in_progress", {}), ("done", "done", done)):
            title = f"bench task {status[0]}{i}"
            tasks.append(
                Task(column=columns[role], status=status, title=title, started_at=started, **run, **extra)
            )
    Task.objects.bulk_create(tasks)

    def timed(cold: bool) -> float:
        if cold:
            fragments._card_html.clear()
        started = time.process_time()
        fragments.board_live_context(board=board)
        return (time.process_time() - started) * 1000

    timed(True)  # compiles the templates
    cold = statistics.median(timed(True) for _ in range(args.repeat))
    warm = statistics.median(timed(False) for _ in range(args.repeat))
    context = fragments.board_live_context(board=board)
    cards = [card for view in context["columns"] for card in view.cards]
    template = engines["jinja2"].get_template("boards/card.html")
    started = time.process_time()
    for _ in range(args.repeat):
        for card in cards:
            template.render({"task": card})
    per_card = (time.process_time() - started) * 1000 / (args.repeat * len(cards))
    print(f"cards_drawn={len(cards)}")
    print(f"update_context_cpu_ms_cards_anew={cold:.2f}")
    print(f"update_context_cpu_ms_cards_kept={warm:.2f}")
    print(f"card_render_cpu_ms={per_card:.3f}")
    print(f"card_html_bytes_mean={sum(len(card.card_html) for card in cards) / len(cards):.0f}")


if __name__ == "__main__":
    main()
