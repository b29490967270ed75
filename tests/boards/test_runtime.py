"""A run in the worker, called in-process: prompt, model call, outcome."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from boards import services
from boards.agents import PromptError, render_prompt, runtime
from boards.agents.providers import ModelRequest
from boards.agents.simulated import simulate
from boards.models import Column, ModelCall, Task, TaskEvent
from kaizen_web.processes import wait_until
from tests.factories import make_agent, make_board


def _claim(board, **task_kwargs):
    task = services.task_create(board=board, title="Inspect", input="scratch on the housing", **task_kwargs)
    [claim] = services.board_pull(board_id=board.pk)
    return task, claim


def test_render_prompt_fills_variables_and_names_unknown_ones():
    assert render_prompt("Do {title}: {input} {{json}}", {"title": "t", "input": "i"}) == "Do t: i {json}"
    with pytest.raises(PromptError, match="customer"):
        render_prompt("Hello {customer}", {"input": "i"})
    with pytest.raises(PromptError, match="plain names"):
        render_prompt("{input.__class__}", {"input": "i"})


@pytest.mark.django_db
def test_run_completes_the_task_with_output_and_confidence(board):
    make_agent(boards=[board], latency_ms=0, error_rate=0.0)
    task, claim = _claim(board)

    assert runtime.run(task.pk, str(claim.lease_token)) == "done"

    task.refresh_from_db()
    assert task.status == Task.Status.DONE
    # The agent's template is "{input}": the prompt is the input itself.
    answer = simulate(
        ModelRequest(model="sim-small", prompt=task.input, input=task.input, settings={"error_rate": 0})
    )
    assert (task.output, task.confidence) == (answer.text, answer.confidence)
    assert 0 < task.confidence < 1
    assert task.lease_token is None


@pytest.mark.django_db
def test_run_twice_completes_once(board):
    make_agent(boards=[board], latency_ms=0, error_rate=0.0)
    task, claim = _claim(board)

    assert runtime.run(task.pk, str(claim.lease_token)) == "done"
    assert runtime.run(task.pk, str(claim.lease_token)) == "stale"
    assert TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.COMPLETED).count() == 1


@pytest.mark.django_db
def test_provider_error_is_a_failed_attempt_not_a_crash(board):
    make_agent(boards=[board], latency_ms=0, error_rate=1.0)
    task, claim = _claim(board)

    assert runtime.run(task.pk, str(claim.lease_token)) == "failed"

    task.refresh_from_db()
    assert task.status == Task.Status.READY
    assert "simulated error" in task.last_error


@pytest.mark.django_db
def test_bad_prompt_template_fails_the_attempt_with_its_message(board):
    agent = make_agent(boards=[board], latency_ms=0)
    agent.prompt_template = "Summarise {document}"
    agent.save()
    task, claim = _claim(board)

    assert runtime.run(task.pk, str(claim.lease_token)) == "failed"
    task.refresh_from_db()
    assert "document" in task.last_error


@pytest.mark.django_db
def test_a_board_that_lost_its_done_column_mid_run_costs_an_attempt_not_a_crash(board):
    make_agent(boards=[board], latency_ms=0, error_rate=0.0, max_attempts=2)
    task, claim = _claim(board)
    Column.objects.filter(board=board, role=Column.Role.DONE).delete()

    assert runtime.run(task.pk, str(claim.lease_token)) == "failed"

    task.refresh_from_db()
    assert task.status == Task.Status.READY
    assert f"Board '{board.name}' has no Done column" in task.last_error
    assert task.output == ""


@pytest.mark.django_db
def test_last_attempt_on_a_board_without_done_waits_in_progress_until_done_is_back(board, caplog):
    make_agent(boards=[board], latency_ms=0, error_rate=0.0, max_attempts=1)
    task, claim = _claim(board)
    done = Column.objects.get(board=board, role=Column.Role.DONE)
    done_values = {"name": done.name, "position": done.position}
    done.delete()

    # Nowhere to fail it into: logged, and the task stays In progress.
    assert runtime.run(task.pk, str(claim.lease_token)) == "failed"
    task.refresh_from_db()
    assert task.status == Task.Status.RUNNING
    assert "has no Done column" in caplog.text

    # Its lease is not renewed any more; once it runs out and the board has a
    # Done column again, the reaper fails it there.
    Column.objects.create(board=board, role=Column.Role.DONE, **done_values)
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.leases_reap() == 1
    task.refresh_from_db()
    assert task.status == Task.Status.FAILED


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_batch_of_claimed_runs_runs_side_by_side_and_each_ends_on_its_own(board):
    # No quality checks: this is about the runtime, not jidoka (tests/andon inspect outputs);
    # the simulated model is rightly unsure of some of these bare inputs.
    make_agent(boards=[board], latency_ms=0, error_rate=0.0, concurrency=3, quality_checks=[])
    tasks = [services.task_create(board=board, title=f"Inspect {n}", input=f"part {n}") for n in range(3)]
    claims = services.board_pull(board_id=board.pk)
    assert len(claims) == 3
    # One of them was already taken back (its lease ran out): only it is stale.
    stale = claims[0]
    services.task_attempt_fail(task_id=stale.task_id, lease_token=stale.lease_token, error="lease lost")

    outcomes = runtime.run_batch([(c.task_id, str(c.lease_token)) for c in claims])

    assert outcomes == ["stale", "done", "done"]
    statuses = dict(Task.objects.filter(pk__in=[t.pk for t in tasks]).values_list("pk", "status"))
    assert statuses[stale.task_id] == Task.Status.READY
    assert [statuses[c.task_id] for c in claims[1:]] == [Task.Status.DONE, Task.Status.DONE]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_batches_run_on_threads_kept_between_them(board, settings):
    # Starting a thread per run (and an executor per batch) cost a busy worker
    # more than the runs' own bookkeeping: the threads are kept and reused.
    # (Runs go to threads without the agent loop, and custom agents always do.)
    import threading

    settings.KAIZEN_AGENT_LOOP = False
    make_agent(boards=[board], latency_ms=0, error_rate=0.0, concurrency=3, quality_checks=[])
    started = threading.Thread.start
    threads_started: list[str] = []

    def counting_start(thread):
        threads_started.append(thread.name)
        return started(thread)

    for round_ in range(3):
        for n in range(3):
            services.task_create(board=board, title=f"Inspect {round_}.{n}", input=f"part {round_}.{n}")
        claims = services.board_pull(board_id=board.pk)
        assert len(claims) == 3
        threading.Thread.start = counting_start  # type: ignore[method-assign]
        try:
            assert runtime.run_batch([(c.task_id, str(c.lease_token)) for c in claims]) == ["done"] * 3
        finally:
            threading.Thread.start = started  # type: ignore[method-assign]
    # At most three run threads in all (fewer if one was free again in time), not nine.
    assert len([name for name in threads_started if name.startswith("run")]) <= 3


@pytest.mark.django_db
def test_claimed_runs_go_to_the_workers_in_batches(board, settings, monkeypatch):
    from boards import tasks as celery_tasks

    settings.KAIZEN_RUN_BATCH = 2
    sent = []
    monkeypatch.setattr(celery_tasks.run_tasks, "delay", lambda claims: sent.append(("batch", claims)))
    monkeypatch.setattr(celery_tasks.run_task, "delay", lambda *claim: sent.append(("one", claim)))
    claims = [services.Claim(n, f"token-{n}") for n in range(5)]

    services.enqueue.runs_enqueue(claims)

    assert sent == [
        ("batch", [[0, "token-0"], [1, "token-1"]]),
        ("batch", [[2, "token-2"], [3, "token-3"]]),
        ("one", (4, "token-4")),
    ]


def _finished_runs(board, n: int, label: str = "batch part") -> list[services.RunResult]:
    """``n`` claimed tasks of ``board``, each with the output its agent made."""
    [services.task_create(board=board, title=f"Inspect {i}", input=f"{label} {i}") for i in range(n)]
    claims = services.board_pull(board_id=board.pk)
    current = services.tasks_run_begin(claims=[(c.task_id, c.lease_token) for c in claims])
    return [
        services.RunResult(
            task_id=c.task_id,
            lease_token=c.lease_token,
            output=runtime.implementation_for(current[c.task_id].agent).process(current[c.task_id]),
            attempt=1,
        )
        for c in claims
    ]


@pytest.mark.django_db
def test_runs_completed_together_are_each_completed_with_their_ledger(board):
    make_agent(boards=[board], latency_ms=0, error_rate=0.0, concurrency=3)
    results = _finished_runs(board, 3)
    stale = results[1]
    services.task_attempt_fail(task_id=stale.task_id, lease_token=stale.lease_token, error="lease lost")

    assert services.tasks_complete(results=results) == [True, False, True]

    for result in results:
        task = Task.objects.get(pk=result.task_id)
        rows = list(task.model_call_rows.all())
        assert len(rows) == 1 and task.cost == rows[0].cost > 0  # a late run's call is recorded too
        if result is stale:
            assert task.status == Task.Status.READY and task.output == ""
        else:
            assert task.status == Task.Status.DONE and task.output == result.output.text
            assert task.accepted_tier == 1 and task.lease_token is None
            event = task.events.get(kind=TaskEvent.Kind.COMPLETED)
            assert (event.from_column.role, event.to_column.role) == ("in_progress", "done")
            assert event.agent_id == task.agent_id


@pytest.mark.django_db
def test_a_completion_batch_writes_its_rows_in_the_same_statements_whatever_its_size(board, settings):
    settings.KAIZEN_KNOWLEDGE = True
    make_agent(boards=[board], latency_ms=0, error_rate=0.0, concurrency=20, quality_checks=[])
    board.columns.filter(role__in=[Column.Role.READY, Column.Role.IN_PROGRESS]).update(wip_limit=None)
    inserts = []

    def record(execute, sql, params, many, context):
        if sql.startswith("INSERT"):
            inserts[-1].append(sql)
        return execute(sql, params, many, context)

    for n in (2, 12):
        # Inputs of their own: no call repeats an earlier one (that writes a Muda row more).
        results = _finished_runs(board, n, label=f"batch of {n}, part")
        inserts.append([])
        with connection.execute_wrapper(record):
            assert services.tasks_complete(results=results) == [True] * n
        for result in results:
            # Every output inspected, its call in the ledger, its pattern for the knowledge base.
            task = Task.objects.get(pk=result.task_id)
            assert task.status == Task.Status.DONE
            assert task.inspections.count() == task.model_call_rows.count() == task.patterns.count() == 1
    # The rows of 12 runs in the statements of 2: not one statement more, nor a longer one.
    assert inserts[0] == inserts[1]


@pytest.mark.django_db
def test_runs_completed_together_write_nothing_when_a_board_has_no_done_column(board):
    make_agent(boards=[board], latency_ms=0, error_rate=0.0, concurrency=2)
    results = _finished_runs(board, 2)
    Column.objects.filter(board=board, role=Column.Role.DONE).delete()

    with pytest.raises(services.ColumnMissing):
        services.tasks_complete(results=results)

    assert Task.objects.filter(status=Task.Status.RUNNING).count() == 2
    assert not ModelCall.objects.exists()


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("agent_loop", [True, False], ids=["on-the-loop", "on-threads"])
def test_in_a_worker_runs_finishing_together_complete_together_and_a_bad_one_fails_alone(
    settings, monkeypatch, agent_loop
):
    settings.KAIZEN_AGENT_LOOP = agent_loop
    monkeypatch.setattr(services.pull, "_in_worker", True)
    # "Together" must not depend on the machine's speed: on threads the three runs
    # meet at a barrier before they hand in their results (on the loop they finish
    # in one pass of it, the barrier unused), and a fresh completer gathers
    # for a second (the real window, 10 ms, is about a quiet machine's timing;
    # a running completer keeps the window it started with).
    settings.KAIZEN_COMPLETE_WINDOW_MS = 1000
    monkeypatch.setattr(runtime, "completer", runtime.Completer())
    finished = threading.Barrier(3, timeout=60)
    real_complete = runtime.completer.complete

    def complete_together(result):
        finished.wait()
        return real_complete(result)

    monkeypatch.setattr(runtime.completer, "complete", complete_together)
    # No pulls from the completer here.
    monkeypatch.setattr(services.pull, "request_pull", lambda **kwargs: None)
    good, bad = make_board(), make_board()
    # No quality checks: this is about completing in batches, not jidoka.
    make_agent(
        boards=[good, bad], latency_ms=0, error_rate=0.0, concurrency=4, max_attempts=2, quality_checks=[]
    )
    batches = []
    real = services.tasks_complete

    def counted(*, results):
        batches.append(len(results))
        return real(results=results)

    # The runtime calls it through the package; task_complete, in its own module.
    monkeypatch.setattr(services, "tasks_complete", counted)
    monkeypatch.setattr(services.runs, "tasks_complete", counted)
    claims = []
    for board in (good, good, bad):
        task = services.task_create(board=board, title="Inspect", input=f"part on {board.slug} {len(claims)}")
        claims += [c for c in services.board_pull(board_id=board.pk) if c.task_id == task.pk]
    Column.objects.filter(board=bad, role=Column.Role.DONE).delete()

    outcomes = runtime.run_batch([(c.task_id, str(c.lease_token)) for c in claims])

    assert outcomes == ["done", "done", "failed"]
    # The three runs were completed together; the batch holding the bad board's
    # run failed and fell back to one by one (task_complete is tasks_complete of one).
    assert batches == [3, 1, 1, 1]
    statuses = [Task.objects.get(pk=c.task_id).status for c in claims]
    assert statuses == [Task.Status.DONE, Task.Status.DONE, Task.Status.READY]
    assert "has no Done column" in Task.objects.get(pk=claims[2].task_id).last_error


@pytest.mark.postgres
@pytest.mark.redis  # its claims are sent to Celery
@pytest.mark.django_db(transaction=True)
def test_a_run_waiting_for_its_batch_to_complete_holds_no_database_connection(board, monkeypatch):
    # Held connections would starve the completer of the pool it commits through.
    from concurrent.futures import Future

    from django.db import connection

    from kaizen_web import batching

    monkeypatch.setattr(services.pull, "_in_worker", True)
    monkeypatch.setattr(services.pull, "request_pull", lambda **kwargs: None)
    held = []

    class Checked(Future):
        def result(self, timeout=None):
            held.append(connection.connection is not None)
            return super().result(timeout)

    monkeypatch.setattr(batching, "Future", Checked)  # what the completer's runs wait on
    make_agent(boards=[board], latency_ms=0, error_rate=0.0)
    for _ in range(2):  # the second run reuses the first's result (a database read, no model call)
        services.task_create(board=board, title="Inspect", input="the same scratch")
        [claim] = services.board_pull(board_id=board.pk)
        assert runtime.run(claim.task_id, str(claim.lease_token)) == "done"

    assert held == [False, False]
    assert Task.objects.filter(reused_from__isnull=False).count() == 1


def test_the_pull_request_threads_outlast_redis_being_away(monkeypatch, caplog):
    import redis

    served: list[int] = []
    answers = iter([redis.ConnectionError("Connection refused"), redis.ConnectionError("again"), 7])

    def serve(*, timeout):
        answer = next(answers, None)
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            served.append(answer)
        return answer

    monkeypatch.setattr(runtime.services, "pull_request_serve", serve)
    monkeypatch.setattr(runtime.PullRequests, "THREADS", 1)
    monkeypatch.setattr(runtime.PullRequests, "RETRY_SECONDS", 0.01)
    requests = runtime.PullRequests()
    caplog.set_level("INFO", logger="boards.agents.runtime")
    requests.start()
    try:
        assert wait_until(lambda: "Redis is back" in caplog.text, timeout=10)
    finally:
        requests.stop()
        # Ended before the stand-in is undone: a thread left looping would reach
        # the real Redis in whichever test runs next.
        assert requests.join(timeout=10)

    assert served == [7]
    messages = [r.getMessage() for r in caplog.records if r.name == "boards.agents.runtime"]
    # Said once while it lasted, and once when it was over.
    assert sum("Redis is out of reach" in m for m in messages) == 1
    assert sum("Redis is back" in m for m in messages) == 1
