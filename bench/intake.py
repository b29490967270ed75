"""What one task posted to the JSON API costs the web server and PostgreSQL (issue 15).

Starts the web server alone (uvicorn, one process, as bench/run.py starts it) against
PostgreSQL and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL) and a board with no
agents, so nothing but the intake runs: ``--clients`` HTTP clients post ``--tasks``
tasks to ``/api/v1/boards/{slug}/tasks``, ``--rounds`` times (after a warm-up), and
each round prints:

- ``intake_posts_per_s``: the rate the API took them;
- ``intake_cpu_ms_per_post_web`` and ``intake_cpu_ms_per_post_postgres``: CPU time a
  post of the web server and of the bench database's PostgreSQL backends.

The tasks stay in the Backlog, so each round's Backlog is longer than the last's:
compare rounds of the same number across trees. It runs in a minute, so two trees can
be alternated several times within one swing of a shared machine's speed; a tree
without this file is measured by running this file with ``--tree`` set to it.

Usage: python bench/intake.py [--tasks N] [--clients N] [--rounds N] [--tree PATH]
Prints ``name=value`` lines; records nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=2400, help="tasks posted a round (default 2400)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent API clients (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds after the warm-up (default 3)")
    parser.add_argument(
        "--tree", type=Path, default=Path(__file__).resolve().parent.parent, help="checkout to measure"
    )
    args = parser.parse_args()
    # The tree's own code, here and in its web server (started in bench.run's ROOT);
    # in its directory too, which Celery's Django fixup puts first on the path.
    root = args.tree.resolve()
    sys.path.insert(0, str(root))
    os.chdir(root)
    from bench.procfs import cpu_seconds, process_tree
    from bench.run import DEFAULT_DB, DEFAULT_REDIS, Bench

    bench = Bench(
        argparse.Namespace(
            database_url=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB),
            redis_url=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS),
            web_workers=1,
            db_pool=20,
        )
    )
    bench.prepare_database()
    bench.purge()
    try:
        port = bench.start_web()
        from bench.fixtures import bench_user_and_token, line_board, postgres_backends

        board, _ = line_board("intake", wip=200)
        board.agents.clear()  # nothing pulls: the intake alone
        _, key = bench_user_and_token("bench intake")
        web = process_tree(bench.named["web"].pid)
        body = json.dumps({"title": "Sort the inbox", "input": "Classify: scratch on housing, 2 mm."})
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        path = f"/api/v1/boards/{board.slug}/tasks"

        def post(count: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in range(count):
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 201:
                    raise SystemExit(f"the API answered {response.status}: see var/bench/web.log")

        def round_(tasks: int) -> dict[str, float]:
            per_client = tasks // args.clients
            threads = [threading.Thread(target=post, args=(per_client,)) for _ in range(args.clients)]
            postgres = postgres_backends()
            web_before, pg_before, start = cpu_seconds(web), cpu_seconds(postgres), time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
            n = per_client * args.clients
            return {
                "intake_posts_per_s": n / elapsed,
                "intake_cpu_ms_per_post_web": (cpu_seconds(web) - web_before) * 1000 / n,
                "intake_cpu_ms_per_post_postgres": (cpu_seconds(postgres) - pg_before) * 1000 / n,
            }

        round_(args.clients * 50)  # warm-up: imports, pools, prepared statements
        for number in range(1, args.rounds + 1):
            for name, value in round_(args.tasks).items():
                print(f"{name}_round{number}={value:.3f}")
    finally:
        bench.stop_all()
        bench.purge()


if __name__ == "__main__":
    main()
