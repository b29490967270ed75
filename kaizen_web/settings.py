"""Kaizen settings, read from the environment.

Every value has a default that runs on a bare machine (SQLite under var/, a local
Redis); a malformed value raises ImproperlyConfigured naming the variable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("KAIZEN_VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(
    name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str, default: str) -> str:
    """``name``, or the contents of the file ``<name>_FILE`` names (a mounted secret,
    as Docker and Kubernetes provide them), so the value need not sit in the
    environment; setting both is a mistake, not a precedence rule."""
    path = os.environ.get(f"{name}_FILE", "").strip()
    if not path:
        return os.environ.get(name, default)
    if os.environ.get(name):
        raise ImproperlyConfigured(f"set {name} or {name}_FILE, not both")
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImproperlyConfigured(f"{name}_FILE names {path!r}, which cannot be read: {exc}") from None
    if not value:
        raise ImproperlyConfigured(f"{name}_FILE names {path!r}, which is empty")
    return value


def env_proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """The header a TLS-terminating proxy sets and its value for HTTPS, written
    ``HTTP_X_FORWARDED_PROTO,https`` (Django's form) or ``X-Forwarded-Proto,https``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    header, sep, value = (part.strip() for part in raw.partition(","))
    if not sep or not header or not value or "," in value:
        raise ImproperlyConfigured(
            f"{name} must be a header and the value it has for HTTPS, such as "
            f"HTTP_X_FORWARDED_PROTO,https; got {raw!r}"
        )
    if not all(c.isalnum() or c in "-_" for c in header):
        raise ImproperlyConfigured(f"{name}: {header!r} is not a header name (letters, digits, - and _)")
    header = header.upper().replace("-", "_")
    if not header.startswith("HTTP_"):
        header = f"HTTP_{header}"
    return header, value


def local_secret_key(path: Path) -> str:
    """This installation's own key, made once and kept (mode 0600) under var/, so a
    bare machine never runs on a key published in the source. Several machines
    sharing one database must all set SECRET_KEY instead."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process (web, worker, beat start together) made it first.
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY", "")
if not SECRET_KEY:
    if env_bool("KAIZEN_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("SECRET_KEY must be set (KAIZEN_REQUIRE_SECRET_KEY is on)")
    SECRET_KEY = local_secret_key(VAR_DIR / "secret_key")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "ninja",
    "boards",
    "andon",
    "experiments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # LoginRequiredMiddleware, with an HX-Redirect for htmx requests.
    "kaizen_web.middleware.HtmxLoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "kaizen_web.urls"
ASGI_APPLICATION = "kaizen_web.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            # {% url %} remembering what it reversed (kaizen_web.template_urls says why).
            "builtins": ["kaizen_web.template_urls"],
        },
    },
    {
        # The board's card alone (boards.jinja says why). Autoescaped, as
        # Django's Jinja2 backend sets it.
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "NAME": "jinja2",
        "DIRS": [BASE_DIR / "templates" / "jinja2"],
        "APP_DIRS": False,
        "OPTIONS": {"environment": "boards.jinja.environment"},
    },
]

# --- Database ---------------------------------------------------------------
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASE_URL = env_secret("DATABASE_URL", f"sqlite:///{VAR_DIR / 'kaizen.sqlite3'}")
try:
    _db = dj_database_url.parse(DATABASE_URL)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None

# Applied to every new SQLite connection (init_command): WAL lets readers run
# beside the one writer, and in WAL mode synchronous=NORMAL syncs at checkpoints
# rather than at every commit (a power cut may lose the last commits, never
# corrupts the file).
SQLITE_INIT_COMMAND = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
_ON_SQLITE = _db["ENGINE"] == "django.db.backends.sqlite3"
if _db["ENGINE"] == "django.db.backends.postgresql":
    # A psycopg pool rather than CONN_MAX_AGE: the Celery worker runs many threads
    # (one per in-flight model call) and Celery closes the connection after every
    # task. With a pool, close() hands the connection back instead of tearing it
    # down, so connection reuse survives Celery and the number of server
    # connections stays bounded by max_size whatever the thread count.
    _db["CONN_MAX_AGE"] = 0
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN", 2, minimum=0),
        "max_size": env_int("DB_POOL_MAX", 20, minimum=1),
        "timeout": env_float("DB_POOL_TIMEOUT", 30.0, minimum=0.1),
    }
elif _ON_SQLITE:
    # IMMEDIATE transactions take SQLite's write lock at BEGIN, so concurrent
    # claimers queue up instead of failing with "database is locked" when a
    # read lock cannot be upgraded; WAL lets readers run beside the writer.
    _db.setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": SQLITE_INIT_COMMAND,
        }
    )
    # Closed connections go to a small pool and are reused, as on PostgreSQL
    # (kaizen_web/sqlite_backend: a new one parses the whole schema first);
    # KAIZEN_SQLITE_POOL=0 for Django's backend as it comes.
    if env_bool("KAIZEN_SQLITE_POOL", True):
        _db["ENGINE"] = "kaizen_web.sqlite_backend"
    # The test database must be a file, not :memory:, so that the Celery worker
    # and the web server the integration tests start can open it too.
    _db["TEST"] = {"NAME": str(VAR_DIR / "test-kaizen.sqlite3")}
DATABASES = {"default": _db}
# On PostgreSQL the line's hottest lookups (kaizen_web.prepared) are prepared once
# per connection (PREPARE) instead of planned at every call: planning was nearly
# half of PostgreSQL's statement time on the line (bench/README.md, fifth stop). Off
# behind a pooler in transaction mode that does not carry prepared statements
# (PgBouncer before 1.21, or without max_prepared_statements), where a statement
# prepared on one server connection is not there on the next.
KAIZEN_DB_PREPARE = env_bool("KAIZEN_DB_PREPARE", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker and the channel layer ------------------------------
REDIS_DEFAULT_URL = "redis://127.0.0.1:6379/0"
# `make run` without REDIS_URL starts its own Redis (on 6380, or a free port if
# that is taken) and, while it runs, says where in this file (scripts/run.py
# writes it; JSON with the url and the server's pid). A command started from
# another terminal (apply_config, shell) reads it, so its live updates reach the
# browsers of that demo rather than a Redis that may not even run on the default port.
EMBEDDED_REDIS_FILE = VAR_DIR / "run" / "redis.json"


def embedded_redis_url(path: Path) -> str | None:
    """The URL of the embedded Redis a running `make run` left in ``path``; None
    when there is no such file. A file naming a server that is gone (a `make run`
    killed with -9) is ignored, with a line on stderr saying so. Cheap enough for
    every start: one small read, a signal-0 to the pid and a loopback connect."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        print(f"kaizen: cannot read {path} ({exc}); not using the embedded Redis", file=sys.stderr)
        return None
    try:
        info = json.loads(text)
        url, pid = str(info["url"]), int(info["pid"])
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except (ValueError, KeyError, TypeError):
        print(f"kaizen: {path} is not what `make run` writes; not using it", file=sys.stderr)
        return None
    if parts.scheme != "redis" or not loopback or port is None:
        print(f"kaizen: {path} names {url}, not a Redis on this machine; not using it", file=sys.stderr)
        return None
    try:
        try:
            os.kill(pid, 0)
        except PermissionError:
            pass  # alive, and another user's: the connect decides
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        print(
            f"kaizen: {path} names the embedded Redis of a `make run` that has stopped ({url}, pid {pid}); "
            f"using {REDIS_DEFAULT_URL}. Set REDIS_URL to choose another.",
            file=sys.stderr,
        )
        return None
    return url


REDIS_URL = env_secret("REDIS_URL", "") or embedded_redis_url(EMBEDDED_REDIS_FILE) or REDIS_DEFAULT_URL

# Redis pub/sub channels ignore the database number: without a prefix naming
# the database, two instances sharing a Redis server (kept apart by database, as
# their Celery queues are) would receive each other's board updates.
_REDIS_DB = urlsplit(REDIS_URL).path.strip("/") or "0"
CHANNEL_LAYERS = {
    "default": {
        # The pub/sub layer: group sends fan out through Redis PUBLISH, with no
        # per-channel capacity that could silently drop fragments.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"kaizen-db{_REDIS_DB}"},
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "kaizen")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# The knowledge base (experiments.patterns, experiments.knowledge): a pattern row per
# finished attempt, embedded off the line's path. Off: no rows are written (the
# similar-work page, warnings and examples then see only what was written before).
KAIZEN_KNOWLEDGE = env_bool("KAIZEN_KNOWLEDGE", True)
# The knowledge base's embedder (experiments.knowledge) has its own queue, served
# by a worker of its own at the lowest CPU priority (make run starts it): the line
# never waits on an embedding, and a busy line takes the CPU first.
KAIZEN_KNOWLEDGE_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}.knowledge"
CELERY_TASK_ROUTES = {"experiments.tasks.embed_patterns": {"queue": KAIZEN_KNOWLEDGE_QUEUE}}
# While the rest of the machine keeps more than this share of its CPU busy, the
# embedder takes a batch of 4 per beat and catches up when it is quieter (1: it
# never yields; for an embedder on a machine of its own, or a line busy day and night).
KAIZEN_EMBED_YIELD_SHARE = env_float("KAIZEN_EMBED_YIELD_SHARE", 0.5, minimum=0.0, maximum=1.0)
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_PREFETCH_MULTIPLIER", 4, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# The demo feed adds example tasks to demo boards this often (0: never).
KAIZEN_DEMO_FEED_SECONDS = env_float("KAIZEN_DEMO_FEED_SECONDS", 0.0, minimum=0.0)
# The kaizen loop's looks: a harmful change is rolled back within minutes. Each
# look's boundaries are computed for the looks actually taken, so looking more
# often costs a little power, never the error rates. A demo (the feed on) looks
# every 20 s, so a visitor sees its experiments decide.
KAIZEN_EXPERIMENT_LOOK_SECONDS = env_float(
    "KAIZEN_EXPERIMENT_LOOK_SECONDS",
    20.0 if KAIZEN_DEMO_FEED_SECONDS > 0 else 300.0,
    minimum=1.0,
    maximum=300.0,
)
CELERY_BEAT_SCHEDULE = {
    "evaluate-experiments": {
        "task": "experiments.tasks.evaluate_experiments",
        "schedule": KAIZEN_EXPERIMENT_LOOK_SECONDS,
    },
    # Replays whose worker stopped go on with another; shadows at their size or
    # time limit are decided; proposals move through their gates.
    "resume-replays": {
        "task": "experiments.tasks.resume_replays",
        "schedule": env_float("KAIZEN_REPLAY_RESUME_SECONDS", 15.0, minimum=1.0),
    },
    # The kaizen loop's Plan and Do: at most one proposal per agent per run.
    "kaizen-cycle": {
        "task": "experiments.tasks.kaizen_cycle",
        "schedule": env_float("KAIZEN_PDCA_SECONDS", 3600.0, minimum=60.0),
    },
    # The knowledge base: patterns the line wrote get their vectors (experiments.knowledge).
    "embed-patterns": {
        "task": "experiments.tasks.embed_patterns",
        "schedule": env_float("KAIZEN_EMBED_SECONDS", 2.0, minimum=0.5),
        # A beat the embedder could not take in time is dropped, not queued up.
        "options": {"expires": 30},
    },
    "reap-expired-leases": {
        "task": "boards.tasks.reap_expired_leases",
        "schedule": env_float("KAIZEN_REAPER_SECONDS", 5.0, minimum=0.5),
    },
    # Budgets and spend (andon.budgets): lift budget stops whose period ended,
    # recount new budgets from the ledger, and look for a cost anomaly.
    "budgets-tick": {
        "task": "andon.tasks.budgets_tick",
        "schedule": env_float("KAIZEN_BUDGETS_TICK_SECONDS", 60.0, minimum=5.0),
    },
    # The flow rollups (boards.services.flow_fold): every board's hours that are
    # over, summed once, so the Flow page reads a few hundred rows for a week.
    "fold-flow": {
        "task": "boards.tasks.fold_flow",
        "schedule": env_float("KAIZEN_FLOW_FOLD_SECONDS", 300.0, minimum=5.0),
    },
    "pull-all-boards": {
        # A safety net: pulls are triggered by every state change, this only
        # catches capacity that freed up while no trigger fired.
        "task": "boards.tasks.pull_all_boards",
        "schedule": env_float("KAIZEN_PULL_SECONDS", 10.0, minimum=0.5),
    },
}
if KAIZEN_DEMO_FEED_SECONDS > 0:
    CELERY_BEAT_SCHEDULE["demo-feed"] = {
        "task": "boards.tasks.feed_demo_boards",
        "schedule": KAIZEN_DEMO_FEED_SECONDS,
    }
# An hour is folded into the flow rollups this long after it ended: longer than
# any transaction that could still commit an event stamped inside it.
KAIZEN_FLOW_FOLD_GRACE_SECONDS = env_float("KAIZEN_FLOW_FOLD_GRACE_SECONDS", 600.0, minimum=0.0)
# The demo's simulated reviewer (andon.demo_reviewer): every this many seconds it
# decides one inbox row of a demo board (0: never; `make run` turns it on), once
# the row has waited KAIZEN_DEMO_REVIEWER_MIN_AGE_SECONDS.
KAIZEN_DEMO_REVIEWER_SECONDS = env_float("KAIZEN_DEMO_REVIEWER_SECONDS", 0.0, minimum=0.0)
KAIZEN_DEMO_REVIEWER_MIN_AGE_SECONDS = env_float("KAIZEN_DEMO_REVIEWER_MIN_AGE_SECONDS", 10.0, minimum=0.0)
# ...and restarts a demo agent's line that a defect spike stopped this long ago
# (never a cord a person pulled), so an unattended demo shows the stop, then goes on.
KAIZEN_DEMO_REVIEWER_RESTART_SECONDS = env_float("KAIZEN_DEMO_REVIEWER_RESTART_SECONDS", 60.0, minimum=0.0)
if KAIZEN_DEMO_REVIEWER_SECONDS > 0:
    CELERY_BEAT_SCHEDULE["demo-reviewer"] = {
        "task": "andon.tasks.review_demo_escalations",
        "schedule": KAIZEN_DEMO_REVIEWER_SECONDS,
    }

# --- Kaizen ------------------------------------------------------------------
# A claimed task holds a lease; the worker renews it while the model call runs
# and the reaper takes back tasks whose lease ran out (see services.task_return_or_fail).
KAIZEN_LEASE_SECONDS = env_float("KAIZEN_LEASE_SECONDS", 60.0, minimum=1.0)
# Worker heartbeats (boards.workers): each Celery worker process sets a Redis key
# every KAIZEN_WORKER_HEARTBEAT_SECONDS that expires after KAIZEN_WORKER_DEAD_SECONDS.
# A worker whose key is gone (and still gone at a second look, a couple of beats
# later) is taken for dead, and the tasks its runs held go back to Ready at once
# instead of waiting out their leases. 10 s is ten missed beats: far longer than a
# garbage collection or a thread waiting for the GIL stalls a live process, short
# beside the lease. A worker wrongly taken for dead loses only the work in flight
# (its late results are ignored, the lease token guarantees it), never a task.
KAIZEN_WORKER_HEARTBEAT_SECONDS = env_float("KAIZEN_WORKER_HEARTBEAT_SECONDS", 1.0, minimum=0.1)
KAIZEN_WORKER_DEAD_SECONDS = env_float("KAIZEN_WORKER_DEAD_SECONDS", 10.0, minimum=0.3)
if KAIZEN_WORKER_DEAD_SECONDS < 3 * KAIZEN_WORKER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "KAIZEN_WORKER_DEAD_SECONDS must be at least three KAIZEN_WORKER_HEARTBEAT_SECONDS "
        f"({KAIZEN_WORKER_DEAD_SECONDS:g} < 3 x {KAIZEN_WORKER_HEARTBEAT_SECONDS:g}): a worker "
        "that misses one beat is not dead"
    )
# A process that ends (a management command, `manage.py shell`) waits this long at
# exit for its live updates to be sent (kaizen_web.live); 0 drops them.
KAIZEN_BROADCAST_EXIT_FLUSH_SECONDS = env_float("KAIZEN_BROADCAST_EXIT_FLUSH_SECONDS", 5.0, minimum=0.0)
# A run held longer than this has its lease left to run out, so a model call
# that hangs costs an attempt instead of keeping its task In progress forever.
# The task goes back up to KAIZEN_LEASE_SECONDS (plus a reaper pass) later.
KAIZEN_RUN_TIMEOUT_SECONDS = env_float("KAIZEN_RUN_TIMEOUT_SECONDS", 600.0, minimum=1.0)
# 1.0 runs simulated models at their profile's latency; 0 makes them instant.
KAIZEN_SIMULATED_LATENCY_SCALE = env_float("KAIZEN_SIMULATED_LATENCY_SCALE", 1.0, minimum=0.0)
# Live updates coalesce only in a burst: one with nothing sent within this window
# goes out at once; those arriving within it after a send are gathered and go out
# together (one message per board) when it ends (see kaizen_web.live).
KAIZEN_BROADCAST_WINDOW_MS = env_int("KAIZEN_BROADCAST_WINDOW_MS", 50, minimum=0)
# At most this share of a process's time, on average over a second, goes to
# rendering live updates; past it, updates are gathered for longer (see kaizen_web.live).
KAIZEN_BROADCAST_CPU_SHARE = env_float("KAIZEN_BROADCAST_CPU_SHARE", 0.1, minimum=0.01)
# Cards rendered per column on the board; the rest are counted, not drawn.
KAIZEN_COLUMN_CARD_LIMIT = env_int("KAIZEN_COLUMN_CARD_LIMIT", 50, minimum=1)
# A column without a WIP limit (Done, with the board's history) is counted on the
# board up to this many tasks and shown as "10000+" past it (boards.selectors;
# at least KAIZEN_COLUMN_CARD_LIMIT + 1, whatever is set here).
KAIZEN_COLUMN_COUNT_CAP = env_int("KAIZEN_COLUMN_COUNT_CAP", 10_000, minimum=1)
# The board page's live part (banner, agents, columns) is rendered at most once
# this often per web process and shared by the page loads meanwhile; the page's
# script re-reads it fresh as its websocket opens (boards.fragments.board_live_html_get).
# 0 renders it for every load.
KAIZEN_BOARD_PAGE_MAX_AGE_MS = env_int("KAIZEN_BOARD_PAGE_MAX_AGE_MS", 500, minimum=0)

# The garbage collector's thresholds in the web server and the workers, set once
# they have loaded their code, which is then left out of every collection
# (gc.freeze; kaizen_web.heap). Python's (700, 10, 10) made the web server stop
# for up to 250 ms at a time under load (bench/board_page.py). Empty: Python's own.
KAIZEN_GC_THRESHOLDS = env_list("KAIZEN_GC_THRESHOLDS", ["20000", "50", "100"])

# Claimed runs sent to the workers in one message (and run side by side there).
KAIZEN_RUN_BATCH = env_int("KAIZEN_RUN_BATCH", 50, minimum=1)

# In a worker, the cascades of a batch of runs whose models all have an
# asynchronous client (the simulated model, openai, anthropic) run on one event
# loop per process, their calls awaited; custom agents run on threads, as every
# run does with False (boards.agents.runtime says why).
KAIZEN_AGENT_LOOP = env_bool("KAIZEN_AGENT_LOOP", True)

# In a worker, runs finishing within this many ms of each other are completed in
# one transaction; 0 completes each on its own.
KAIZEN_COMPLETE_WINDOW_MS = env_int("KAIZEN_COMPLETE_WINDOW_MS", 10, minimum=0)

# In the web server, tasks added (the API, the board's form) within this many ms of
# each other are written in one transaction (boards.services.intake); 0 writes
# each on its own. On by default on SQLite only, whose one writer at a time made
# every intake queue for the write lock; on PostgreSQL intakes commit side by side.
KAIZEN_INTAKE_GROUP_MS = env_int("KAIZEN_INTAKE_GROUP_MS", 10 if _ON_SQLITE else 0, minimum=0)

# Requests whose synchronous work (middleware, view, rendering) runs at once in a
# web process; the others wait their turn in order (kaizen_web.asgi). 0: no limit,
# the default where intakes are grouped (SQLite's): a request adding a task waits
# for its group and would hold its turn meanwhile.
KAIZEN_WEB_REQUEST_THREADS = env_int(
    "KAIZEN_WEB_REQUEST_THREADS", 0 if KAIZEN_INTAKE_GROUP_MS else 8, minimum=0
)

# Custom agent classes (dotted paths) an agent may name as its implementation.
KAIZEN_AGENT_CLASSES = env_list("KAIZEN_AGENT_CLASSES", ["boards.example_agents.KeywordClassifier"])
# How long an identical model call is served from the response cache; 0 turns it off.
KAIZEN_RESPONSE_CACHE_SECONDS = env_int("KAIZEN_RESPONSE_CACHE_SECONDS", 7 * 24 * 3600, minimum=0)
# Circuit breakers of provider models (an agent's own are set on the agent): this
# many consecutive errors of a model open its breaker, and the cascade skips it
# until, after the cool-down, one probe call succeeds.
KAIZEN_MODEL_BREAKER_THRESHOLD = env_int("KAIZEN_MODEL_BREAKER_THRESHOLD", 5, minimum=1)
KAIZEN_MODEL_BREAKER_COOLDOWN_SECONDS = env_float("KAIZEN_MODEL_BREAKER_COOLDOWN_SECONDS", 60.0, minimum=0.1)
# The cost-anomaly warning (andon.budgets): the last hour's spend of a board or an
# agent above FACTOR times the median of its previous 24 hourly spends, and at
# least MIN_USD (so a quiet line, whose median is a few cents, does not alarm).
KAIZEN_COST_ANOMALY_FACTOR = env_float("KAIZEN_COST_ANOMALY_FACTOR", 3.0, minimum=1.0)
KAIZEN_COST_ANOMALY_MIN_USD = env_float("KAIZEN_COST_ANOMALY_MIN_USD", 1.0, minimum=0.0)
# The kaizen loop: experiments on prompt changes (experiments.services, .stats).
KAIZEN_MAX_CHANGES_PER_DAY = env_int("KAIZEN_MAX_CHANGES_PER_DAY", 3, minimum=1)
# An experiment's plan (experiments.plans; a board's config may ask for its own):
# the canary's share of the agent's tasks and the treatment tasks it needs before
# a person may advance it, then the efficacy stage's planned tasks per arm.
KAIZEN_CANARY_SHARE = env_float("KAIZEN_CANARY_SHARE", 0.05, minimum=0.01, maximum=0.5)
KAIZEN_CANARY_SIZE = env_int("KAIZEN_CANARY_SIZE", 200, minimum=100)
KAIZEN_EXPERIMENT_MAX_N = env_int("KAIZEN_EXPERIMENT_MAX_N", 2000, minimum=100)
# Genchi genbutsu (experiments.genchi): model calls a replay step runs at once,
# and the probe families (dotted paths to experiments.probes.ProbeFamily classes).
# Empty: the built-in families (experiments.probes.DEFAULT_FAMILIES); a list
# replaces them (name the built-in ones too to keep them).
KAIZEN_PROBE_FAMILIES = env_list("KAIZEN_PROBE_FAMILIES", [])
KAIZEN_REPLAY_CONCURRENCY = env_int("KAIZEN_REPLAY_CONCURRENCY", 16, minimum=1)
# A replay's pace (items a second, both versions each): 1,000 past tasks in 40 s.
KAIZEN_REPLAY_RATE = env_float("KAIZEN_REPLAY_RATE", 25.0, minimum=0.1)
# ... and the share of that pace it keeps while live runs are in flight in its
# worker: live work first.
KAIZEN_REPLAY_BUSY_SHARE = env_float("KAIZEN_REPLAY_BUSY_SHARE", 0.4, minimum=0.01, maximum=1.0)
# The replay gate's guardrails: how much a candidate may raise the mean cost and
# latency per task (relative) before the gate fails, shown beyond doubt (the 95%
# interval's lower end past the limit); an agent's gate policy may set its own.
# Tokens are reported, and cost carries them. Cost may rise more than latency:
# a few examples in the prompt double a cheap classifier's cost and may be well
# worth it, which the pass rate shows.
KAIZEN_REPLAY_GUARDRAILS = {
    "cost": env_float("KAIZEN_REPLAY_COST_LIMIT", 1.5, minimum=0.0),
    "latency": env_float("KAIZEN_REPLAY_LATENCY_LIMIT", 0.5, minimum=0.0),
}
KAIZEN_REPLAY_STEP_SECONDS = env_float("KAIZEN_REPLAY_STEP_SECONDS", 20.0, minimum=0.1)
KAIZEN_REPLAY_LEASE_SECONDS = env_float("KAIZEN_REPLAY_LEASE_SECONDS", 90.0, minimum=1.0)
# Custom quality checks (dotted paths to functions) an agent's checks may name (andon.inspection).
KAIZEN_CUSTOM_CHECKS = env_list(
    "KAIZEN_CUSTOM_CHECKS",
    ["andon.example_checks.no_email_addresses", "andon.example_checks.figures_from_input"],
)

# The knowledge base's sentence embeddings (experiments.embeddings, issue 14).
# "local" (the default) runs all-MiniLM-L6-v2 in this process, offline, 384
# dimensions; "openai" asks any server speaking OpenAI's /v1/embeddings (OpenAI,
# Ollama at http://localhost:11434/v1, vLLM) for MODEL (default text-embedding-3-small)
# at BASE_URL (default OpenAI's), with API_KEY (or API_KEY_FILE, a mounted secret).
# DIM, when set, is the length the vectors must have; otherwise the first answer's.
# Every vector is stored with the model's name: changing the model re-embeds.
# The providers are experiments.embeddings.PROVIDERS, named again here because
# settings import no app; a typo fails at start, not at the first embedding.
KAIZEN_EMBEDDINGS_PROVIDERS = ("local", "openai")
KAIZEN_EMBEDDINGS = {
    "provider": env_str("KAIZEN_EMBEDDINGS_PROVIDER", "local").strip().lower() or "local",
    "model": env_str("KAIZEN_EMBEDDINGS_MODEL", "").strip(),
    "base_url": env_str("KAIZEN_EMBEDDINGS_BASE_URL", "").strip(),
    "api_key": env_secret("KAIZEN_EMBEDDINGS_API_KEY", "").strip(),
    "dim": env_int("KAIZEN_EMBEDDINGS_DIM", 0, minimum=1) or None,
}
if KAIZEN_EMBEDDINGS["provider"] not in KAIZEN_EMBEDDINGS_PROVIDERS:
    raise ImproperlyConfigured(
        f"KAIZEN_EMBEDDINGS_PROVIDER must be one of {', '.join(KAIZEN_EMBEDDINGS_PROVIDERS)}, "
        f"got {KAIZEN_EMBEDDINGS['provider']!r}"
    )

# Failure warnings in the andon inbox (andon.failure_warnings): an open escalation
# shows its agent's past decided escalations at least this similar to it (cosine
# similarity of the embeddings of title and input), at most KAIZEN_WARNING_CASES
# of them. Measured on the example boards' demo inputs with all-MiniLM-L6-v2:
# 0.70 keeps 96.5% of pairs of the same kind of task (median 0.90) and 0.4% of
# pairs of different kinds for the same agent (median 0.36, highest 0.76).
# An embedding model of another kind may need its own floor.
KAIZEN_WARNING_MIN_SIMILARITY = env_float("KAIZEN_WARNING_MIN_SIMILARITY", 0.70, minimum=0.0, maximum=1.0)
KAIZEN_WARNING_CASES = env_int("KAIZEN_WARNING_CASES", 5, minimum=1)

# The response cache lives in Redis, shared by every worker. Its keys carry the
# Redis database and KAIZEN_CACHE_PREFIX, so installations (or test runs) sharing
# a Redis keep apart.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "responses": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"kaizen-db{_REDIS_DB}-{env_str('KAIZEN_CACHE_PREFIX', 'cache')}",
        "TIMEOUT": KAIZEN_RESPONSE_CACHE_SECONDS or None,
        # Hundreds of worker threads may ask at once: they wait for one of the
        # pool's connections rather than fail past redis-py's default cap of 100.
        # A Redis that does not answer costs a model call, not a stalled line:
        # a completion stores its batch's answers on its worker's one completing
        # thread (boards.agents.response_cache.settle_cache), so reads and writes
        # give up after two seconds (redis-py waits for ever by default).
        "OPTIONS": {
            "pool_class": "redis.BlockingConnectionPool",
            "max_connections": 100,
            "timeout": 10,
            "socket_connect_timeout": 2,
            "socket_timeout": 2,
        },
    },
}

# --- Metrics (/metrics, Prometheus; see kaizen_web/metrics.py) ----------------
# Who may scrape: a bearer token (or KAIZEN_METRICS_TOKEN_FILE, a mounted secret)
# and/or the addresses allowed (CIDRs, comma-separated). With neither, /metrics
# answers 403 and says how to turn it on; with both, a scrape needs both.
KAIZEN_METRICS_TOKEN = env_secret("KAIZEN_METRICS_TOKEN", "").strip()


def env_networks(name: str) -> list[str]:
    """A comma-separated list of addresses or CIDRs, each checked and normalised."""
    networks = []
    for item in env_list(name, []):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not an address or a network (a CIDR such as 10.0.0.0/8)"
            ) from None
    return networks


KAIZEN_METRICS_ALLOW = env_networks("KAIZEN_METRICS_ALLOW")

# --- Auth ---------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "boards-list"
LOGOUT_REDIRECT_URL = "login"
# ModelBackend's rules, with the signed-in user and their permissions read in two
# compiled queries (kaizen_web.auth). Sessions made under Django's own backend
# path before this setting sign in once more.
AUTHENTICATION_BACKENDS = ["kaizen_web.auth.ModelBackend"]
# Database sessions, read by a compiled query (kaizen_web.sessions).
SESSION_ENGINE = "kaizen_web.sessions"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SESSION_COOKIE_SECURE)

# HTTPS, for a deployment behind TLS (`manage.py check --deploy` asks for these).
# Off by default: the demo serves plain HTTP on loopback. SECURE_PROXY_SSL_HEADER
# only behind a proxy that always sets (or strips) that header, or a client could
# claim HTTPS on a plain connection.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header("SECURE_PROXY_SSL_HEADER")

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
# WhiteNoise serves from the finders (below) and only warns when this is missing.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Static files are served by WhiteNoise from the ASGI app itself, straight from
# the finders, so a fresh checkout needs no collectstatic step.
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Time, level and logger on every line: a log file (make run writes them to
    # var/log/) reads on its own, and scripts/run.py tells warnings and errors
    # apart by the level, to show them in the terminal.
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
