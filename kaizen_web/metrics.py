"""Prometheus metrics of every Kaizen process, and who may read them.

Two kinds of series, kept apart on purpose:

- **Events** (a model call, its tokens and cost, an inspection's verdict) are
  counted where they happen, in whichever process that is: mostly the Celery
  workers. They are the counters and histograms defined here.
- **State** (WIP per column, the oldest item's age, open escalations, line stops,
  breaker states) is read from the database when Prometheus scrapes, by a custom
  collector (``boards.metrics.LineCollector``). The database is the truth for
  state and every process sees the same one, so those gauges need no
  per-process bookkeeping at all.

How the processes are aggregated: prometheus_client's **multiprocess mode**.
Every process started with ``PROMETHEUS_MULTIPROC_DIR`` set writes its counters
and histograms to small memory-mapped files there (``counter_<pid>.db``,
``histogram_<pid>.db``), and ``/metrics`` on the web server sums the files of
every process on the machine at scrape time. Chosen over the alternatives
because:

- the web server must answer for the workers, and the workers serve no HTTP;
  pushing to a Pushgateway would add a server to run and loses the per-series
  reset semantics Prometheus relies on;
- counting in Redis would put a network round trip on every model call (the
  line's hot path), where an mmap write is a few microseconds under one lock;
- the worker is one process with many threads (Celery's thread pool), which
  share one file, and a prefork pool's children get files of their own
  (prometheus_client notices the fork by the pid).

A process that dies leaves its files behind, and that is what a total wants:
the calls it made were made. Only "live" gauge modes would need
``multiprocess.mark_process_dead``, and there are none here (state gauges come
from the database). The files are wiped when the whole line starts
(``scripts/run.py``), never while it runs, so counters only go up between
starts; a restart is a counter reset, which ``rate()`` understands.

Without ``PROMETHEUS_MULTIPROC_DIR`` (tests, a single process) the series are
this process's own. The scrape says which (``kaizen_metrics_multiprocess``).

Names follow the OpenTelemetry GenAI semantic conventions, in the Prometheus
form of the OpenTelemetry-to-Prometheus compatibility rules: dots become
underscores, the unit is appended (``_seconds``), a unit in braces
(``{token}``) is dropped, and histograms get ``_bucket``/``_sum``/``_count``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The buckets the semantic conventions ask for (ExplicitBucketBoundaries).
GEN_AI_DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
GEN_AI_TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)

# Every model call Kaizen makes is a chat-style completion (the OpenAI chat API,
# Anthropic's messages API, the simulated model).
GEN_AI_OPERATION = "chat"


def multiprocess_dir() -> str:
    return os.environ.get(MULTIPROC_ENV, "").strip()


if multiprocess_dir():
    # A process started by hand with the variable set, before anyone made the
    # directory: make it (the start scripts wipe it, nobody else does).
    os.makedirs(multiprocess_dir(), exist_ok=True)

# This process's own series; not prometheus_client's global REGISTRY, so a
# library registering its own there never ends up in Kaizen's scrape by accident.
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)

GEN_AI_OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration",
    "GenAI operation duration (OpenTelemetry gen_ai.client.operation.duration): a model call's "
    "latency, failed calls included (error_type set).",
    ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "error_type"],
    unit="seconds",
    buckets=GEN_AI_DURATION_BUCKETS,
    registry=PROCESS_REGISTRY,
)
GEN_AI_TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Number of input and output tokens used (OpenTelemetry gen_ai.client.token.usage), per "
    "successful model call.",
    ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"],
    buckets=GEN_AI_TOKEN_BUCKETS,
    registry=PROCESS_REGISTRY,
)
MODEL_CALLS = Counter(
    "kaizen_model_calls",
    "Ledger rows: model calls made (source=model), answers served from the response cache "
    "(source=cache) and earlier results reused (source=reuse).",
    ["board", "agent", "tier", "provider", "model", "source"],
    registry=PROCESS_REGISTRY,
)
MODEL_COST = Counter(
    "kaizen_model_cost_dollars",
    "Money spent on model calls, in US dollars, as the ledger prices them.",
    ["board", "agent", "provider", "model"],
    registry=PROCESS_REGISTRY,
)
INSPECTIONS = Counter(
    "kaizen_inspections",
    "Finished runs inspected (jidoka), by verdict: passed or defect.",
    ["board", "agent", "verdict"],
    registry=PROCESS_REGISTRY,
)


@dataclass(frozen=True)
class ModelCallSample:
    """One ledger row, as the metrics see it (plain values: no app's types here)."""

    board: str
    agent: str
    tier: str
    source: str
    provider: str
    model: str
    tokens_in: int
    tokens_out: int
    cost: float
    latency_ms: float
    error_type: str


def model_calls_observe(samples: Iterable[ModelCallSample]) -> None:
    """Count ledger rows: the ``kaizen_model_*`` counters for every row, and the GenAI
    histograms for the calls that reached a provider (a cache hit or a reused result
    is no client operation)."""
    for s in samples:
        MODEL_CALLS.labels(s.board, s.agent, s.tier, s.provider, s.model, s.source).inc()
        if s.cost:
            MODEL_COST.labels(s.board, s.agent, s.provider, s.model).inc(s.cost)
        if s.source != "model":
            continue
        GEN_AI_OPERATION_DURATION.labels(GEN_AI_OPERATION, s.provider, s.model, s.error_type).observe(
            s.latency_ms / 1000
        )
        if s.error_type:
            # A failed call has no usage to report (the spec: MUST NOT guess).
            continue
        GEN_AI_TOKEN_USAGE.labels(GEN_AI_OPERATION, s.provider, s.model, "input").observe(s.tokens_in)
        GEN_AI_TOKEN_USAGE.labels(GEN_AI_OPERATION, s.provider, s.model, "output").observe(s.tokens_out)


def inspections_observe(verdicts: Iterable[tuple[str, str, bool]]) -> None:
    """Count inspections: (board, agent, passed) each."""
    for board, agent, passed in verdicts:
        INSPECTIONS.labels(board, agent, "passed" if passed else "defect").inc()


# --- the scrape -----------------------------------------------------------------------


class _ProcessCollector(Collector):
    """This process's own series, when there is no multiprocess directory."""

    def collect(self) -> Iterator[Metric]:
        yield from PROCESS_REGISTRY.collect()


class _ModeCollector(Collector):
    def __init__(self, multiprocess: bool) -> None:
        self.multiprocess = multiprocess

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "kaizen_metrics_multiprocess",
            "1: the event series sum every process started with PROMETHEUS_MULTIPROC_DIR (web, "
            "workers); 0: they are the answering web process's own only.",
            value=1 if self.multiprocess else 0,
        )


def scrape(collectors: Iterable[Collector] = ()) -> bytes:
    """The text exposition of every process's event series plus ``collectors``
    (the state read from the database), built on a registry of its own per scrape,
    as prometheus_client's multiprocess mode requires."""
    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_ProcessCollector())
    registry.register(_ModeCollector(bool(directory)))
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


# --- who may scrape ------------------------------------------------------------------

ENABLE_HINT = (
    "set KAIZEN_METRICS_TOKEN (a bearer token Prometheus sends) or KAIZEN_METRICS_ALLOW "
    "(the addresses allowed to scrape, as CIDRs such as 10.0.0.0/8), or both"
)


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    challenge: bool = False  # answer with WWW-Authenticate: Bearer


def parse_networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDRs (or single addresses) as networks; ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an address or a network (CIDR such as 10.0.0.0/8)") from None
    return networks


def _address_allowed(remote_addr: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(remote_addr.strip().strip("[]"))
    except ValueError:
        return False  # no address (a unix socket) is no address on the list
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's form of an IPv4 peer
    return any(address in network for network in networks)


def scrape_refusal(*, token: str, allow: list[str], remote_addr: str, authorization: str) -> Refusal | None:
    """Why this request may not read /metrics, or None when it may.

    With neither a token nor an allow-list configured, nobody may: the series name
    boards and agents, which are not for anyone who can reach the port. With both,
    a request needs both (an allowed address and the token). The address is the
    peer address the ASGI server reports (REMOTE_ADDR); behind a proxy, let the
    server resolve X-Forwarded-For (uvicorn --proxy-headers --forwarded-allow-ips)."""
    if not token and not allow:
        return Refusal(403, f"/metrics is off. To let Prometheus scrape it, {ENABLE_HINT}.\n")
    if allow and not _address_allowed(remote_addr, parse_networks(allow)):
        return Refusal(
            403, f"/metrics: the address {remote_addr or '(none)'} is not in KAIZEN_METRICS_ALLOW.\n"
        )
    if token:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return Refusal(
                401, "/metrics needs the header Authorization: Bearer <KAIZEN_METRICS_TOKEN>.\n", True
            )
        # Constant time: how much of a guess matched must not show in the timing.
        if not hmac.compare_digest(presented.strip().encode(), token.encode()):
            return Refusal(401, "/metrics: the bearer token is not KAIZEN_METRICS_TOKEN.\n", True)
    return None
