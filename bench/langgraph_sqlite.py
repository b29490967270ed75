"""LangGraph with its SQLite checkpointer: the yardstick for the embedded default
(issue 15, target 2; bench/sqlite_line.py prints both in the same run).

The graph is three nodes in a row, ``receive -> model -> inspect``, over a state
of a task id, its input, the model's output and the verdict:

- ``receive`` trims the input and refuses an empty one (what our API's schema does);
- ``model`` is a fake instant model: it answers at once with a label, a
  confidence of 0.9 and a token count, computed from the input (no sleep, no I/O);
- ``inspect`` checks the answer as our default checks do in spirit: the
  confidence above a floor, no hedging words, the tokens within a ratio of the
  input's, and sets the verdict ``done`` or ``review``.

Each task is one ``graph.invoke`` with its own ``thread_id`` (``task-<n>``), as an
application checkpointing each task would do, so the checkpointer writes every
step of every task to the SQLite file (LangGraph's default durability; the
saver's own ``PRAGMA journal_mode=WAL``, SQLite's default ``synchronous``). The
tasks run one after the other in one process: ``SqliteSaver`` serialises every
read and write on one connection behind a lock, so threads would only queue on
it. Nothing crosses a broker, an HTTP request or a browser, unlike our line.

LangGraph is not one of the product's requirements: ``run_in_own_venv`` builds a
virtual environment of its own under ``var/bench/langgraph-venv`` (once; reused
while the pinned versions match) and runs this file there as a subprocess.
Prints ``name=value`` lines: ``langgraph_sqlite_tasks_per_s`` and the process's
CPU per task.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "var" / "bench" / "langgraph-venv"
# Pinned so that figures from different runs compare the same LangGraph.
REQUIREMENTS = ["langgraph==1.2.24", "langgraph-checkpoint-sqlite==3.1.2"]
STAMP = VENV / ".kaizen-bench-requirements"

HEDGES = ("maybe", "not sure", "i think", "possibly")


def build_graph(checkpointer):
    """The three-node graph, compiled with ``checkpointer``."""
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class TaskState(TypedDict, total=False):
        task_id: int
        input: str
        output: dict
        verdict: str

    def receive(state: TaskState) -> dict:
        text = state["input"].strip()
        if not text:
            raise ValueError("empty input")
        return {"input": text}

    def model(state: TaskState) -> dict:
        text = state["input"]
        label = "defect" if "scratch" in text else "ok"
        return {"output": {"label": label, "confidence": 0.9, "tokens": len(text.split()) + 2}}

    def inspect(state: TaskState) -> dict:
        output = state["output"]
        hedged = any(word in str(output["label"]).lower() for word in HEDGES)
        wasteful = output["tokens"] > 1.5 * len(state["input"].split()) + 8
        passed = output["confidence"] >= 0.5 and not hedged and not wasteful
        return {"verdict": "done" if passed else "review"}

    graph = StateGraph(TaskState)
    graph.add_node("receive", receive)
    graph.add_node("model", model)
    graph.add_node("inspect", inspect)
    graph.add_edge(START, "receive")
    graph.add_edge("receive", "model")
    graph.add_edge("model", "inspect")
    graph.add_edge("inspect", END)
    return graph.compile(checkpointer=checkpointer)


def measure(tasks: int, warmup: int, path: Path, *, synchronous: str = "") -> dict[str, float]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    with SqliteSaver.from_conn_string(str(path)) as saver:
        if synchronous:
            saver.conn.execute(f"PRAGMA synchronous={synchronous}")
        graph = build_graph(saver)

        def run(first: int, count: int) -> int:
            done = 0
            for n in range(first, first + count):
                text = f"Classify: scratch on housing, {n} mm."
                config = {"configurable": {"thread_id": f"task-{n}"}}
                state = graph.invoke({"task_id": n, "input": text}, config)
                done += state["verdict"] == "done"
            return done

        run(0, warmup)
        cpu = time.process_time()
        start = time.perf_counter()
        done = run(warmup, tasks)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if done != tasks:
            raise SystemExit(f"only {done} of {tasks} tasks were inspected as done")
        # Every task left its checkpoints: what the comparison assumes.
        checkpointed = saver.conn.execute("SELECT COUNT(DISTINCT thread_id) FROM checkpoints").fetchone()[0]
        if checkpointed != warmup + tasks:
            raise SystemExit(f"{checkpointed} threads checkpointed, expected {warmup + tasks}")
        per_task = saver.conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] / checkpointed
    name = f"langgraph_sqlite_sync_{synchronous.lower()}" if synchronous else "langgraph_sqlite"
    return {
        f"{name}_tasks_per_s": tasks / elapsed,
        f"{name}_cpu_ms_per_task": cpu * 1000 / tasks,
        f"{name}_checkpoints_per_task": per_task,
    }


def ensure_venv() -> Path:
    """The benchmark's own environment with LangGraph in it (built on first use)."""
    python = VENV / "bin" / "python"
    wanted = "\n".join(REQUIREMENTS)
    if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
        check=True,
    )
    STAMP.write_text(wanted)
    return python


def run_in_own_venv(tasks: int, warmup: int = 100, synchronous: str = "") -> dict[str, float]:
    """Run this file in LangGraph's environment and return its figures."""
    python = ensure_venv()
    argv = [str(python), str(Path(__file__).resolve()), "--tasks", str(tasks), "--warmup", str(warmup)]
    out = subprocess.run(
        [*argv, "--synchronous", synchronous],
        check=True,
        capture_output=True,
        text=True,
        # Not this project's interpreter settings: LangGraph's own process.
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")},
    )
    figures = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition("=")
        figures[name] = float(value)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=3000, help="tasks measured (3000)")
    parser.add_argument("--warmup", type=int, default=100, help="tasks run first, not measured (100)")
    parser.add_argument(
        "--synchronous",
        choices=["", "NORMAL"],
        default="",
        help="PRAGMA synchronous for the saver's connection (default: SQLite's, FULL)",
    )
    args = parser.parse_args()
    try:
        import langgraph  # noqa: F401
    except ImportError:
        # Run from the project's environment: hand over to LangGraph's own.
        figures = run_in_own_venv(args.tasks, args.warmup, args.synchronous)
    else:
        # A fresh file beside the SQLite line's (same file system, same disk).
        path = ROOT / "var" / "bench" / "langgraph-checkpoints.sqlite3"
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            old.unlink(missing_ok=True)
        figures = measure(args.tasks, args.warmup, path, synchronous=args.synchronous)
    for name, value in figures.items():
        print(f"{name}={value:.3f}")


if __name__ == "__main__":
    main()
