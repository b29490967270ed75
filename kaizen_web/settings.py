"""Kaizen settings, read from the environment.

Every value has a default that runs on a bare machine (SQLite under var/, a local
Redis); a malformed value raises ImproperlyConfigured naming the variable.
"""

from __future__ import annotations

import os
import secrets
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
SECRET_KEY = os.environ.get("SECRET_KEY", "")
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
    # Last on purpose: see kaizen_web/middleware.py.
    "kaizen_web.middleware.sync_chain",
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
        },
    },
]

# --- Database ---------------------------------------------------------------
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'kaizen.sqlite3'}")
try:
    _db = dj_database_url.parse(DATABASE_URL)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None

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
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take SQLite's write lock at BEGIN, so concurrent
    # claimers queue up instead of failing with "database is locked" when a
    # read lock cannot be upgraded; WAL lets readers run beside the writer.
    _db.setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # The test database must be a file, not :memory:, so that the Celery worker
    # and the web server the integration tests start can open it too.
    _db["TEST"] = {"NAME": str(VAR_DIR / "test-kaizen.sqlite3")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker and the channel layer ------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

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
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_PREFETCH_MULTIPLIER", 4, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    # The kaizen loop's looks: a harmful change is rolled back within minutes.
    "evaluate-experiments": {
        "task": "experiments.tasks.evaluate_experiments",
        "schedule": env_float("KAIZEN_EXPERIMENT_LOOK_SECONDS", 300.0, minimum=1.0, maximum=300.0),
    },
    # The kaizen loop's Plan and Do: at most one proposal per agent per run.
    "kaizen-cycle": {
        "task": "experiments.tasks.kaizen_cycle",
        "schedule": env_float("KAIZEN_PDCA_SECONDS", 3600.0, minimum=60.0),
    },
    "reap-expired-leases": {
        "task": "boards.tasks.reap_expired_leases",
        "schedule": env_float("KAIZEN_REAPER_SECONDS", 5.0, minimum=0.5),
    },
    "pull-all-boards": {
        # A safety net: pulls are triggered by every state change, this only
        # catches capacity that freed up while no trigger fired.
        "task": "boards.tasks.pull_all_boards",
        "schedule": env_float("KAIZEN_PULL_SECONDS", 10.0, minimum=0.5),
    },
}
KAIZEN_DEMO_FEED_SECONDS = env_float("KAIZEN_DEMO_FEED_SECONDS", 0.0, minimum=0.0)
if KAIZEN_DEMO_FEED_SECONDS > 0:
    CELERY_BEAT_SCHEDULE["demo-feed"] = {
        "task": "boards.tasks.feed_demo_boards",
        "schedule": KAIZEN_DEMO_FEED_SECONDS,
    }
# The demo's simulated reviewer (andon.demo_reviewer): every this many seconds it
# decides one inbox row of a demo board (0: never; `make run` turns it on), once
# the row has waited KAIZEN_DEMO_REVIEWER_MIN_AGE_SECONDS.
KAIZEN_DEMO_REVIEWER_SECONDS = env_float("KAIZEN_DEMO_REVIEWER_SECONDS", 0.0, minimum=0.0)
KAIZEN_DEMO_REVIEWER_MIN_AGE_SECONDS = env_float("KAIZEN_DEMO_REVIEWER_MIN_AGE_SECONDS", 10.0, minimum=0.0)
if KAIZEN_DEMO_REVIEWER_SECONDS > 0:
    CELERY_BEAT_SCHEDULE["demo-reviewer"] = {
        "task": "andon.tasks.review_demo_escalations",
        "schedule": KAIZEN_DEMO_REVIEWER_SECONDS,
    }

# --- Kaizen ------------------------------------------------------------------
# A claimed task holds a lease; the worker renews it while the model call runs
# and the reaper takes back tasks whose lease ran out (see services._return_or_fail).
KAIZEN_LEASE_SECONDS = env_float("KAIZEN_LEASE_SECONDS", 60.0, minimum=1.0)
# A run held longer than this has its lease left to run out, so a model call
# that hangs costs an attempt instead of keeping its task In progress forever.
# The task goes back up to KAIZEN_LEASE_SECONDS (plus a reaper pass) later.
KAIZEN_RUN_TIMEOUT_SECONDS = env_float("KAIZEN_RUN_TIMEOUT_SECONDS", 600.0, minimum=1.0)
# 1.0 runs simulated models at their profile's latency; 0 makes them instant.
KAIZEN_SIMULATED_LATENCY_SCALE = env_float("KAIZEN_SIMULATED_LATENCY_SCALE", 1.0, minimum=0.0)
# How long live updates for one board are gathered before one message is sent.
KAIZEN_BROADCAST_WINDOW_MS = env_int("KAIZEN_BROADCAST_WINDOW_MS", 50, minimum=0)
# At most this share of a process's time goes to rendering live updates; past
# it, updates are gathered for longer (see boards.broadcast).
KAIZEN_BROADCAST_CPU_SHARE = env_float("KAIZEN_BROADCAST_CPU_SHARE", 0.1, minimum=0.01)
# Cards rendered per column on the board; the rest are counted, not drawn.
KAIZEN_COLUMN_CARD_LIMIT = env_int("KAIZEN_COLUMN_CARD_LIMIT", 50, minimum=1)

# Claimed runs sent to the workers in one message (and run side by side there).
KAIZEN_RUN_BATCH = env_int("KAIZEN_RUN_BATCH", 50, minimum=1)

# In a worker, runs finishing within this many ms of each other are completed in
# one transaction; 0 completes each on its own.
KAIZEN_COMPLETE_WINDOW_MS = env_int("KAIZEN_COMPLETE_WINDOW_MS", 10, minimum=0)

# Custom agent classes (dotted paths) an agent may name as its implementation.
KAIZEN_AGENT_CLASSES = env_list("KAIZEN_AGENT_CLASSES", ["boards.example_agents.KeywordClassifier"])
# How long an identical model call is served from the response cache; 0 turns it off.
KAIZEN_RESPONSE_CACHE_SECONDS = env_int("KAIZEN_RESPONSE_CACHE_SECONDS", 7 * 24 * 3600, minimum=0)
# Circuit breakers of provider models (an agent's own are set on the agent): this
# many consecutive errors of a model open its breaker, and the cascade skips it
# until, after the cool-down, one probe call succeeds.
KAIZEN_MODEL_BREAKER_THRESHOLD = env_int("KAIZEN_MODEL_BREAKER_THRESHOLD", 5, minimum=1)
KAIZEN_MODEL_BREAKER_COOLDOWN_SECONDS = env_float("KAIZEN_MODEL_BREAKER_COOLDOWN_SECONDS", 60.0, minimum=0.1)
# The kaizen loop: experiments on prompt changes (experiments.services, .stats).
KAIZEN_MAX_CHANGES_PER_DAY = env_int("KAIZEN_MAX_CHANGES_PER_DAY", 3, minimum=1)
KAIZEN_CANARY_SHARE = env_float("KAIZEN_CANARY_SHARE", 0.05, minimum=0.01)
KAIZEN_EXPERIMENT_MAX_N = env_int("KAIZEN_EXPERIMENT_MAX_N", 2000, minimum=200)
# Custom quality checks (dotted paths to functions) an agent's checks may name (andon.inspection).
KAIZEN_CUSTOM_CHECKS = env_list("KAIZEN_CUSTOM_CHECKS", ["andon.example_checks.no_email_addresses"])

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
        "OPTIONS": {"pool_class": "redis.BlockingConnectionPool", "max_connections": 100, "timeout": 10},
    },
}

# --- Auth ---------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "boards-list"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

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
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
