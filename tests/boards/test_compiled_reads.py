"""The reads a pull, a batch of runs begun and a batch completed make whatever
they claim are compiled once per process (kaizen_web.prepared): after the first
of each, the ORM compiles only the SQL that depends on what is claimed. Compiling
them at every pull and batch cost more CPU than the rest of a small one
(bench/line_steps.py)."""

from __future__ import annotations

import itertools

import pytest
from django.db.models.sql.compiler import SQLCompiler, SQLUpdateCompiler

from andon.models import Inspection
from boards import services
from boards.agents.cascade import implementation_for
from boards.selectors import tasks_reusable_get
from experiments import line as experiment_line
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


@pytest.fixture
def compiled(monkeypatch):
    """The SELECTs and UPDATEs the ORM compiles (every query's compiler but the
    INSERT and DELETE ones' own), as SQL text."""
    found: list[str] = []

    def counting(as_sql):
        def compile_noted(self, *args, **kwargs):
            sql, params = as_sql(self, *args, **kwargs)
            found.append(sql)
            return sql, params

        return compile_noted

    for compiler in (SQLCompiler, SQLUpdateCompiler):
        monkeypatch.setattr(compiler, "as_sql", counting(compiler.as_sql))
    return found


_notes = itertools.count()


def _round(board, n):
    """Add n tasks (each its own input: nothing to reuse) and pull them; returns
    the pull's claims."""
    for _ in range(n):
        note = next(_notes)
        services.task_create(
            board=board, title=f"note {note}", input=f"Summarise delivery note {note}: 12 pallets, on time."
        )
    return services.board_pull(board_id=board.pk)


def _begin(claims):
    pairs = [(c.task_id, str(c.lease_token)) for c in claims]
    current = services.tasks_run_begin(claims=pairs, worker="worker-1")
    tasks_reusable_get(tasks=list(current.values()))
    return current


def _run(claims, current):
    results = []
    for claim in claims:
        task = current[claim.task_id]
        output = implementation_for(experiment_line.agent_for_run(task)).process(task)
        results.append(
            services.RunResult(task_id=claim.task_id, lease_token=claim.lease_token, output=output)
        )
    return results


def _complete(claims, current):
    return services.tasks_complete(results=_run(claims, current))


def test_a_pull_and_a_batch_begun_compile_nothing(compiled):
    board = make_board(ready_limit=None, doing_limit=None)
    make_agent(boards=[board], concurrency=50, error_rate=0)
    # The first rounds compile what they read, once for each size of batch
    # (rounded up to a power of two: kaizen_web.prepared).
    for n in (3, 5):
        claims = _round(board, n)
        _complete(claims, _begin(claims))

    for n in (3, 5):
        del compiled[:]
        claims = _round(board, n)
        assert len(claims) == n
        # Nothing left to compile, of the intake and the pull: Ready's
        # candidates (the rows wanted and the capabilities offered varying) and
        # the Backlog's (its room) are compiled once too.
        assert compiled == []

        del compiled[:]
        current = _begin(claims)
        assert sorted(current) == sorted(c.task_id for c in claims)
        # Nor the begin's read and UPDATE (the worker's name on the runs).
        assert compiled == []
        _complete(claims, current)


def test_a_completed_batch_compiles_nothing(compiled):
    board = make_board(ready_limit=None, doing_limit=None)
    make_agent(boards=[board], concurrency=50, error_rate=0)
    claims = _round(board, 4)
    _complete(claims, _begin(claims))
    claims = _round(board, 4)
    assert len(claims) == 4
    # The runs' model calls read the breakers now and then (a cache): not measured.
    results = _run(claims, _begin(claims))

    del compiled[:]
    assert services.tasks_complete(results=results) == [True] * 4
    found = list(compiled)
    # Compiled once, for a batch of this size: the runs' tasks and agents, their
    # boards' Done and Review columns, the breakers to reset (the agents' and
    # the models' in one read), the finishes' events and calls (their tasks are
    # in hand), and the calls that may repeat these (by request
    # key, time and task). Compiled still, only for a batch with a defect in it
    # (the simulated model gets some of these notes wrong): andon.jidoka's
    # spike_stops, reading the agent's line stops and last inspections.
    defects = Inspection.objects.filter(task_id__in=[c.task_id for c in claims], passed=False).count()
    spike_reads = [sql for sql in found if 'FROM "andon_linestop"' in sql or 'FROM "andon_inspection"' in sql]
    assert len(spike_reads) == (3 if defects else 0), found
    # ...and its agents' read (boards_agent joined to nothing else).
    assert [sql for sql in found if sql not in spike_reads] == (
        [sql for sql in found if sql.startswith('SELECT "boards_agent"."id"')] if defects else []
    )
    assert len(found) == (4 if defects else 0), found
