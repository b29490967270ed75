"""A board receiving a live update every 100 ms stays usable: a reviewer opens the
andon cord, types a reason slowly, submits, and the line is stopped; the focused
card keeps its focus; the agent strip keeps its height while counts change.

A thread of the test makes real changes (a card blocked and unblocked, an agent's
running count going up and down) and broadcasts them, as the line does."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from django.db import connection

from andon.models import LineStop
from boards import broadcast, services
from boards.models import Task
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in
from tests.factories import column, make_agent, make_board, make_reviewer

pytestmark = [pytest.mark.e2e]

REASON = "Outputs quote last year's prices"
# Counts the board's swaps, as live.js reports them (a reload would reset it).
COUNT_SWAPS = """() => {
  window.__swaps = {};
  document.addEventListener("kaizen:live-applied", (e) => {
    window.__swaps[e.detail.id] = (window.__swaps[e.detail.id] || 0) + 1;
  });
}"""


class Churn:
    """Real changes to the board every 100 ms until stopped: block and unblock a
    Ready card, and move a task in and out of In progress for an agent (its
    running count changes), each broadcast like the services do."""

    def __init__(self, board, churned: Task, running: Task, agent) -> None:
        self.board, self.churned, self.running, self.agent = board, churned, running, agent
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.rounds = 0
        self.error: BaseException | None = None

    def _run(self) -> None:
        ready, doing = column(self.board, "ready"), column(self.board, "in_progress")
        try:
            while not self.stop_event.wait(0.1):
                task = Task.objects.get(pk=self.churned.pk)
                if task.blocked_at is None:
                    services.task_block(task=task, user=None, note="checking the drawing")
                else:
                    services.task_unblock(task=task, user=None)
                if self.rounds % 2:
                    Task.objects.filter(pk=self.running.pk).update(
                        column=doing, status=Task.Status.RUNNING, agent=self.agent
                    )
                else:
                    Task.objects.filter(pk=self.running.pk).update(
                        column=ready, status=Task.Status.READY, agent=None
                    )
                broadcast.columns_changed(self.board.pk, {ready.pk, doing.pk})
                self.rounds += 1
        except BaseException as exc:  # reported by stop(), in the test's thread
            self.error = exc
        finally:
            connection.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=WAIT_MS / 1000)
        broadcast.flush()
        if self.error is not None:
            raise self.error


@pytest.fixture
def line(transactional_db):
    board = make_board(name="Busy line", backlog=False, doing_limit=None)
    agent = make_agent(boards=[board], name="welder", concurrency=4)
    make_agent(boards=[board], name="painter", concurrency=2)
    services.board_set_paused(board=board, paused=True)  # nothing pulls: the churn moves the cards
    tasks = [services.task_create(board=board, title=f"Card {i}", input=f"card {i}") for i in range(3)]
    return board, agent, tasks


@pytest.fixture
def churn(line) -> Iterator[Churn]:
    board, agent, tasks = line
    running = Churn(board, churned=tasks[0], running=tasks[2], agent=agent)
    yield running
    running.stop_event.set()
    running.thread.join(timeout=WAIT_MS / 1000)


def _open_board(browser, base_url: str, board, *, width: int = 1400, height: int = 900):
    user = make_reviewer(username=f"ana{width}", password=PASSWORD)
    page = log_in(
        browser,
        base_url,
        user.get_username(),
        board.get_absolute_url(),
        viewport={"width": width, "height": height},
    )
    page.evaluate(COUNT_SWAPS)
    return user, page


def _swaps(page, element_id: str) -> int:
    return page.evaluate(f"(window.__swaps || {{}})[{element_id!r}] || 0")


def _wait_swaps(page, element_id: str, at_least: int) -> None:
    page.wait_for_function(f"((window.__swaps || {{}})[{element_id!r}] || 0) >= {at_least}", timeout=WAIT_MS)


def test_the_cord_can_be_pulled_while_the_board_updates_every_100_ms(browser, live_server_url, line, churn):
    board, _agent, tasks = line
    ready_id = f"column-{column(board, 'ready').pk}"
    ana, page = _open_board(browser, live_server_url, board)
    churn.thread.start()
    _wait_swaps(page, ready_id, 3)

    page.click("#cord > summary")
    # Slowly, as a person types, with updates arriving between the keys.
    half = len(REASON) // 2
    for part in (REASON[:half], REASON[half:]):
        before = _swaps(page, ready_id)
        page.locator("#cord-reason").press_sequentially(part, delay=80)
        _wait_swaps(page, ready_id, before + 3)

    assert page.evaluate("document.getElementById('cord').open") is True
    assert page.input_value("#cord-reason") == REASON
    assert page.evaluate("document.activeElement.id") == "cord-reason"
    page.select_option("#cord-scope", "board")
    page.click("#cord-form button[type=submit]")

    page.wait_for_selector(".banner--stopped:has-text('The line is stopped')", timeout=WAIT_MS)
    stop = LineStop.objects.get(board=board, restarted_at__isnull=True)
    assert (stop.reason, stop.stopped_by) == (REASON, ana)
    # The cord folds once the line is stopped, and the page never reloaded.
    assert page.evaluate("document.getElementById('cord').open") is False
    assert page.evaluate("window.__swaps !== undefined")
    churn.stop()


def test_the_focused_card_keeps_focus_across_updates(browser, live_server_url, line, churn):
    board, _agent, tasks = line
    ready_id = f"column-{column(board, 'ready').pk}"
    _user, page = _open_board(browser, live_server_url, board)
    focused = f"task-{tasks[1].pk}"
    page.focus(f"#{focused}")
    churn.thread.start()

    _wait_swaps(page, ready_id, 8)

    assert page.evaluate("document.activeElement.id") == focused
    # Still usable from the keyboard: the arrow moves on to the next card.
    page.keyboard.press("ArrowUp")
    assert page.evaluate("document.activeElement.id") == f"task-{tasks[0].pk}"
    churn.stop()


@pytest.mark.parametrize(("width", "height"), [(1400, 900), (390, 844)])
def test_the_agent_strip_keeps_its_height_while_running_counts_change(
    browser, live_server_url, line, churn, width, height
):
    board, _agent, _tasks = line
    _user, page = _open_board(browser, live_server_url, board, width=width, height=height)
    page.evaluate(
        """() => {
          window.__strip = [];
          document.addEventListener("kaizen:live-applied", (e) => {
            if (e.detail.id !== "board-agents") return;
            const strip = document.getElementById("board-agents");
            window.__strip.push([strip.getBoundingClientRect().height, strip.textContent.replace(/\\s+/g, " ")]);
          });
        }"""
    )
    churn.thread.start()

    page.wait_for_function("window.__strip.length >= 8", timeout=WAIT_MS)

    samples = page.evaluate("window.__strip")
    # The counts did change (so the strip was swapped for real), its height did not.
    assert len({text for _height, text in samples}) > 1
    assert len({height for height, _text in samples}) == 1
    churn.stop()
