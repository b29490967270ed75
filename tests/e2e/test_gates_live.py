"""A change's gates in a real browser (issue 13): an approver opens a proposal
whose replay gate runs on a real Celery worker, sees its progress bar advance
live, then its verdict and paired statistics, without reloading; and a note
being written in a gate's skip form survives the live updates of its replay,
then skips the gate. Screenshots go to each test's tmp dir."""

from __future__ import annotations

import threading

import pytest

from boards import broadcast
from experiments import broadcast as kaizen_broadcast
from experiments.models import ChangeProposal, Gate, Replay
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in
from tests.experiments.genchi_support import history_agent, proposal_in_gates, replay_chunk
from tests.factories import make_approver

pytestmark = pytest.mark.e2e

SAMPLE = 360
# Every value the gate's progress bar shows, as the page shows it (sampled each 50 ms),
# and whether it ever said how long is left.
WATCH_THE_BAR = """(bar) => {
  window.__seen = [];
  window.__eta = false;
  const note = () => {
    const progress = document.querySelector(bar);
    if (!progress) return;
    const value = Number(progress.value);
    if (window.__seen[window.__seen.length - 1] !== value) window.__seen.push(value);
    const eta = progress.parentElement.querySelector('.replay-eta');
    if (eta && /left/.test(eta.textContent)) window.__eta = true;
  };
  note();
  setInterval(note, 50);
}"""


@pytest.mark.worker(env={"KAIZEN_REPLAY_RATE": "20"})
def test_an_approver_watches_a_replay_gate_to_its_verdict_live(
    browser, live_server_url, celery_worker, tmp_path
):
    agent = history_agent(
        tasks=SAMPLE,
        name="triage",
        gates={"adversarial": "never", "shadow": "never", "replay_sample": SAMPLE},
    )
    make_approver(username="ana", password=PASSWORD)
    # Approved: its replay gate starts, and the worker works through it (20 items a second).
    proposal = proposal_in_gates(agent)
    gate = proposal.gates.get()
    assert gate.state == Gate.State.RUNNING

    page = log_in(
        browser, live_server_url, "ana", proposal.get_absolute_url(), viewport={"width": 1400, "height": 1100}
    )
    here = f"#gate-{gate.pk}"
    page.evaluate(WATCH_THE_BAR, f"{here} progress.replay-bar")

    # Part-way, live: the bar moves on while the page stays as it was loaded.
    page.wait_for_function(f"window.__seen.filter(v => v > 0 && v < {SAMPLE}).length >= 2", timeout=WAIT_MS)
    page.screenshot(path=str(tmp_path / "gate-running.png"), full_page=True)
    assert "Running" in page.inner_text(f"{here} .gate-head")

    # The verdict, then the gate decided by it, with the paired statistics.
    page.wait_for_selector(f"{here} .replay-heading .verdict", timeout=WAIT_MS)
    page.wait_for_selector(
        f"{here} .gate-head :is(.evo-status--passed, .evo-status--failed)", timeout=WAIT_MS
    )
    page.wait_for_selector(f"{here} table.replay-stats", timeout=WAIT_MS)
    page.screenshot(path=str(tmp_path / "gate-verdict.png"), full_page=True)

    replay = Replay.objects.get(pk=gate.replay_id)
    gate.refresh_from_db()
    assert replay.state == Replay.State.DONE and replay.done == SAMPLE
    seen = page.evaluate("window.__seen")
    part_way = [value for value in seen if 0 < value < SAMPLE]
    assert len(part_way) >= 2 and part_way == sorted(part_way), seen
    assert seen[-1] == SAMPLE
    assert page.evaluate("window.__eta") is True, "the time left was shown while it ran"
    stats = page.inner_text(f"{here} table.replay-stats")
    assert f"{replay.stats['baseline_pass']} of {SAMPLE}" in stats
    assert f"{replay.stats['candidate_pass']} of {SAMPLE}" in stats
    assert "Exact McNemar" in page.inner_text(f"{here} .replay-figures")
    verdict = page.inner_text(f"{here} .replay-heading .verdict")
    assert verdict.lower() == replay.verdict
    assert gate.state == (Gate.State.PASSED if replay.verdict == "pass" else Gate.State.FAILED)
    # Passed, the canary starts; failed, the change is rejected: the page says which.
    proposal.refresh_from_db()
    page.wait_for_selector(f"#proposal-badges-{proposal.pk} .evo-status--{proposal.status}", timeout=WAIT_MS)
    assert proposal.status in (ChangeProposal.Status.EXPERIMENTING, ChangeProposal.Status.REJECTED)
    assert page.evaluate("window.__kaizenNoReload") is True
    broadcast.flush()


class Pushes:
    """Re-sends the proposal page's live parts from a thread, 100 ms after the
    last went out, as a busy line does (each a real render of the current state)."""

    def __init__(self, proposal_id: int, replay_id: int) -> None:
        self.proposal_id, self.replay_id = proposal_id, replay_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(0.1):
                kaizen_broadcast.replay_changed(self.replay_id)
                kaizen_broadcast.proposal_changed(self.proposal_id)
                broadcast.flush()
        finally:
            connection.close()

    def __enter__(self) -> Pushes:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_MS / 1000)
        broadcast.flush()


def _type(page, text: str) -> None:
    for character in text:
        page.keyboard.type(character)
        page.wait_for_timeout(30)


def test_a_skip_note_survives_the_live_updates_of_its_replay_and_then_skips_the_gate(
    browser, live_server_url, tmp_path
):
    agent = history_agent(
        tasks=120, name="triage", gates={"adversarial": "never", "shadow": "never", "replay_sample": 120}
    )
    make_approver(username="ana", password=PASSWORD)
    proposal = proposal_in_gates(agent)
    gate = proposal.gates.get()
    page = log_in(
        browser, live_server_url, "ana", proposal.get_absolute_url(), viewport={"width": 1400, "height": 1100}
    )
    form = f"#gate-{gate.pk}-skip"
    note = f"{form}-note"
    count = f"#gate-{gate.pk} .replay-count"

    page.click(f"{form} > summary")
    page.click(note)
    page.evaluate(f"window.__noteField = document.querySelector('{note}')")
    page.evaluate(
        "window.__pushes = 0;"
        "document.addEventListener('htmx:wsAfterMessage', () => { window.__pushes += 1; });"
    )
    with Pushes(proposal.pk, gate.replay_id):
        _type(page, "Replayed by hand ")
        page.wait_for_function("window.__pushes >= 3", timeout=WAIT_MS)
        # Real progress while typing: a worker's chunk of 24 items, pushed after commit.
        replay_chunk(gate.replay_id)
        page.wait_for_function(
            f"document.querySelector('{count}').textContent === '24 / 120'", timeout=WAIT_MS
        )
        _type(page, "yesterday; ")
        replay_chunk(gate.replay_id)
        page.wait_for_function(
            f"document.querySelector('{count}').textContent === '48 / 120'", timeout=WAIT_MS
        )
        _type(page, "the canary will tell.")
        seen = page.evaluate("window.__pushes")
        page.wait_for_function(f"window.__pushes >= {seen + 2}", timeout=WAIT_MS)

    text = "Replayed by hand yesterday; the canary will tell."
    state = page.evaluate(
        """(selector) => {
            const field = document.querySelector(selector);
            return {
                same: field === window.__noteField,
                open: field.closest('details').open,
                focused: document.activeElement === field,
                value: field.value,
                caret: field.selectionStart,
            };
        }""",
        note,
    )
    assert state == {"same": True, "open": True, "focused": True, "value": text, "caret": len(text)}
    assert page.evaluate("window.__kaizenNoReload") is True
    page.screenshot(path=str(tmp_path / "gate-skip-note.png"), full_page=True)

    # Submitting works (a plain post, back to this page): the gate is skipped.
    page.click(f"{form} button[data-action=skip]")
    page.wait_for_selector(f"#gate-{gate.pk} .gate-head .evo-status--skipped", timeout=WAIT_MS)
    assert (
        "Replay on past work skipped for the change to triage (v2): its gates are cleared, "
        "and its canary experiment has started." in page.inner_text(".messages")
    )
    gate.refresh_from_db()
    assert (gate.state, gate.note) == (Gate.State.SKIPPED, text)
    assert Replay.objects.get(pk=gate.replay_id).state == Replay.State.CANCELLED
    page.screenshot(path=str(tmp_path / "gate-skipped.png"), full_page=True)
    broadcast.flush()
