"""What ``{examples}`` costs a task (issue 14): retrieval few-shot on the worker's path.

An agent whose template asks for ``{examples}`` pays, per task, for
experiments.few_shot.examples_text: the embedding of the task's title and input
(all-MiniLM-L6-v2 in numpy, unless the same text was embedded before), one search
of the knowledge base's index, and one query for the rows found. This measures
each part and the whole on ``--sizes`` patterns of the agent (SQLite by default,
or ``--database-url``), with the index warm, for task texts of three lengths:

- ``embed_<length>_ms``: one embedding of one text (median of ``--tasks``, and p95);
- ``search_<size>_ms``: one search (the numpy index over every vector);
- ``rows_<size>_ms``: reading the hits' rows;
- ``examples_<size>_<length>_ms``: the whole of examples_text;
- ``stored_vector_<size>_ms``: the whole when the text was embedded before (a
  retry, a replay of past work): a query instead of the embedding;
- ``model_load_s`` and ``index_load_s_<size>``: what the first opted-in task of a
  worker process pays once.

Each time is also taken as CPU time of the process (``*_cpu_ms``, all its threads,
numpy's BLAS threads included): on a shared machine the wall-clock figures carry
the other processes' load, the CPU figures much less of it.

The stored vectors are random unit vectors (embedding 100,000 texts would take
the machine half an hour, and a search costs the same whatever the vectors say);
the query texts are embedded for real. Prints ``name=value`` lines; ``--record``
adds them to bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHORT = "Order {n} arrived broken and I would like my money back."
MEDIUM = (
    "Hello, I ordered a coffee grinder (order {n}) three weeks ago. It arrived yesterday with the lid "
    "cracked and the motor makes a grinding noise when switched on. I have photos of the box, which "
    "was crushed on one side. Could you send a replacement, or refund the 89.90 I paid? I would "
    "prefer the refund to go back to the card I used. Thank you."
)
LONG = " ".join([MEDIUM] * 6)  # past what MiniLM reads (256 word pieces): its slowest case
LENGTHS = {"short": SHORT, "medium": MEDIUM, "long": LONG}


def _setup(database_url: str | None, var: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
    os.environ["KAIZEN_VAR_DIR"] = str(var)
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{var / 'few_shot.sqlite3'}"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _history(agent, board, size: int, dim: int, model: str, rng) -> None:
    """``size`` finished tasks of ``agent``, each with an embedded pattern."""
    from datetime import timedelta

    import numpy as np
    from django.utils import timezone

    from boards.models import Task
    from experiments.models import Pattern
    from experiments.patterns import pattern_text, text_digest

    done = board.columns.get(role="done")
    verdicts = ["passed"] * 7 + ["approved", "corrected", "rejected"]
    now = timezone.now()
    for start in range(0, size, 5000):
        count = min(5000, size - start)
        tasks = Task.objects.bulk_create(
            Task(
                board=board,
                column=done,
                agent=agent,
                title=f"Ticket {start + i}",
                input=SHORT.format(n=start + i),
                status=Task.Status.DONE,
                output="We are sorry; a refund is on its way.",
            )
            for i in range(count)
        )
        matrix = rng.standard_normal((count, dim)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        rows = []
        for i, task in enumerate(tasks):
            text = pattern_text(task.title, task.input)
            verdict = verdicts[(start + i) % len(verdicts)]
            rows.append(
                Pattern(
                    task=task,
                    board=board,
                    agent=agent,
                    attempt=1,
                    prompt_version=1,
                    verdict=verdict,
                    output=task.output,
                    correction="Refund issued." if verdict == "corrected" else "",
                    text=text,
                    text_hash=text_digest(text),
                    embed_model=model,
                    dim=dim,
                    vector=matrix[i].tobytes(),
                    # Stamped apart, as the embedder's batches are: the index's refresh
                    # reads again the rows of the last instant it saw, so one stamp
                    # for all would have every search read every row.
                    embedded_at=now - timedelta(microseconds=size - start - i),
                )
            )
        Pattern.objects.bulk_create(rows)


def _ms(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


class _Clock:
    """Wall and CPU time of what runs inside ``with clock:``, one list each."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> _Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)

    def into(self, results: dict[str, float | str], name: str) -> None:
        results[f"{name}_ms"], results[f"{name}_p95_ms"] = _ms(self.wall)
        results[f"{name}_cpu_ms"], _ = _ms(self.cpu)


def run(sizes: list[int], tasks: int) -> dict[str, float | str]:
    import numpy as np

    from boards.agents.spec import cascade_json, parse_cascade
    from boards.models import Agent, Board, Column, Task
    from experiments import few_shot, vectors
    from experiments.embeddings import get_embedder
    from experiments.models import Pattern

    results: dict[str, float | str] = {
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "numpy's default"),
        "load_average_1min": os.getloadavg()[0],
    }
    embedder = get_embedder()
    started = time.perf_counter()
    embedder.embed(["load the weights"])
    results["model_load_s"] = time.perf_counter() - started
    for name, text in LENGTHS.items():
        clock = _Clock()
        for n in range(tasks):
            with clock:
                embedder.embed([text.format(n=10_000_000 + n)])
        clock.into(results, f"embed_{name}")

    rng = np.random.default_rng(14)
    total = 0
    for size in sizes:
        board = Board.objects.create(name=f"Few-shot {size}", slug=f"few-shot-{size}-{rng.integers(10**9)}")
        for position, role in enumerate(("ready", "in_progress", "review", "done")):
            Column.objects.create(board=board, name=role, role=role, position=position)
        agent = Agent.objects.create(
            name=f"few-shot-{board.slug}",
            prompt_template="{examples}\n\n{input}",
            cascade=cascade_json(parse_cascade([{"provider": "simulated", "model": "sim-small"}])),
        )
        agent.boards.add(board)
        _history(agent, board, size - total, embedder.dim, embedder.name, rng)
        total = size
        vectors.indexes_clear()
        index = vectors.vector_index(embedder.name)
        started = time.perf_counter()
        index.refresh()
        results[f"index_load_s_{size}"] = time.perf_counter() - started

        query = embedder.embed([SHORT.format(n=1)])[0]
        search, rows = _Clock(), _Clock()
        for _ in range(tasks):
            with search:
                hits = index.search(
                    query, k=9, agent_ids=[agent.pk], verdicts=Pattern.GOOD, exclude_tasks={0}
                )
            with rows:
                list(
                    Pattern.objects.filter(pk__in=[h.pattern for h in hits], verdict__in=Pattern.GOOD)
                    .order_by()
                    .values("pk", "task_id", "verdict", "output", "correction", "text_hash", "task__input")
                )
        search.into(results, f"search_{size}")
        rows.into(results, f"rows_{size}")

        for name, text in LENGTHS.items():
            whole = _Clock()
            for n in range(tasks):
                task = Task(pk=None, title="Ticket", input=text.format(n=20_000_000 + n))
                with whole:
                    block = few_shot.examples_text(agent_id=agent.pk, task=task, count=3)
                assert block.count("\nOutput: ") == 3, block
            whole.into(results, f"examples_{size}_{name}")
        stored = _Clock()
        for n in range(tasks):
            # A text the knowledge base holds already: its vector is read, not made.
            task = Task(pk=None, title=f"Ticket {n}", input=SHORT.format(n=n))
            with stored:
                few_shot.examples_text(agent_id=agent.pk, task=task, count=3)
        stored.into(results, f"stored_vector_{size}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000", help="patterns of the agent (ascending)")
    parser.add_argument("--tasks", type=int, default=100, help="tasks timed per measure (default 100)")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--record", action="store_true", help="add the results to bench/README.md")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="kaizen-few-shot-") as var:
        _setup(args.database_url, Path(var))
        results = run(sizes, args.tasks)
    for key, value in results.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    if args.record:
        from bench.run import record

        record(results, "python bench/few_shot.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
