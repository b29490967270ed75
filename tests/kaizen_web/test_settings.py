"""The settings read from the environment: the HTTPS variables a deployment needs
(`manage.py check --deploy` has nothing to warn about once they are set),
secrets from mounted files (``<NAME>_FILE``), a loud error naming the variable
for every bad value, and the embedded Redis of a running `make run` found from
another terminal.

Most tests execute settings.py afresh with ``runpy`` in a patched environment,
which leaves the suite's own configured settings alone.
"""

from __future__ import annotations

import json
import os
import runpy
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parents[2]
SETTINGS = BASE_DIR / "kaizen_web" / "settings.py"

# What a deployment behind a TLS proxy sets, besides its hosts and key.
HTTPS_ENV = {
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "SESSION_COOKIE_SECURE": "true",
}

# Variables of this suite's own environment that would change what is read.
CLEARED = [
    "DEBUG",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "REDIS_URL",
    "REDIS_URL_FILE",
    "CSRF_COOKIE_SECURE",
    "KAIZEN_REQUIRE_SECRET_KEY",
    "KAIZEN_INTAKE_GROUP_MS",
    "KAIZEN_WEB_REQUEST_THREADS",
    *HTTPS_ENV,
]


@pytest.fixture
def load(monkeypatch, tmp_path):
    """``load(**env)``: the settings module's names, read with ``env`` on top of a
    clean environment whose var dir is this test's."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAIZEN_VAR_DIR", str(tmp_path / "var"))

    def load(**env: str) -> dict:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(SETTINGS))

    return load


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "kaizen_web.settings",
            "KAIZEN_VAR_DIR": str(tmp_path / "var"),
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(60),
            "KAIZEN_REQUIRE_SECRET_KEY": "true",
            "ALLOWED_HOSTS": "kaizen.example.com",
            **extra,
        }
    )
    return env


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- HTTPS ------------------------------------------------------------------------


def test_check_deploy_finds_nothing_to_warn_about_with_the_https_variables(tmp_path):
    result = check_deploy(production_env(tmp_path, **HTTPS_ENV))

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_still_warns_when_they_are_missing(tmp_path):
    # The same production environment without them: the check is not silenced.
    result = check_deploy(production_env(tmp_path))

    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W008" in result.stderr


def test_the_https_variables_become_the_settings(load):
    values = load(**HTTPS_ENV)

    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_HSTS_SECONDS"] == 31536000
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert values["SECURE_HSTS_PRELOAD"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert (values["SESSION_COOKIE_SECURE"], values["CSRF_COOKIE_SECURE"]) == (True, True)


def test_https_is_off_by_default_for_the_demo_on_plain_http(load):
    values = load()

    assert (values["SECURE_SSL_REDIRECT"], values["SECURE_HSTS_SECONDS"]) == (False, 0)
    assert values["SECURE_PROXY_SSL_HEADER"] is None


@pytest.mark.parametrize(
    "env, turns",
    [
        ({"DATABASE_URL": "postgres://kaizen@db.example.com/kaizen"}, 8),
        ({}, 0),  # SQLite: its intakes are grouped, and a grouped request would hold a turn
        ({"DATABASE_URL": "postgres://kaizen@db.example.com/kaizen", "KAIZEN_INTAKE_GROUP_MS": "10"}, 0),
        ({"KAIZEN_WEB_REQUEST_THREADS": "3"}, 3),
    ],
)
def test_the_web_requests_turns_default_to_none_where_intakes_are_grouped(load, env, turns):
    assert load(**env)["KAIZEN_WEB_REQUEST_THREADS"] == turns


def test_the_proxy_header_may_be_written_as_the_header_itself(load):
    values = load(SECURE_PROXY_SSL_HEADER=" X-Forwarded-Proto , https ")

    assert values["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("SECURE_HSTS_SECONDS", "a year", "SECURE_HSTS_SECONDS must be an integer, got 'a year'"),
        ("SECURE_HSTS_SECONDS", "-1", "SECURE_HSTS_SECONDS must be at least 0, got -1"),
        ("SECURE_SSL_REDIRECT", "maybe", "SECURE_SSL_REDIRECT must be true or false, got 'maybe'"),
        ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "2", "SECURE_HSTS_INCLUDE_SUBDOMAINS must be true or false"),
        ("SECURE_HSTS_PRELOAD", "yes please", "SECURE_HSTS_PRELOAD must be true or false"),
        ("CSRF_COOKIE_SECURE", "sure", "CSRF_COOKIE_SECURE must be true or false"),
        ("SECURE_PROXY_SSL_HEADER", "https", "SECURE_PROXY_SSL_HEADER must be a header and the value"),
        ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto,", "SECURE_PROXY_SSL_HEADER must be a header"),
        ("SECURE_PROXY_SSL_HEADER", "a,b,c", "SECURE_PROXY_SSL_HEADER must be a header"),
        (
            "SECURE_PROXY_SSL_HEADER",
            "X Forwarded Proto,https",
            "SECURE_PROXY_SSL_HEADER: 'X Forwarded Proto'",
        ),
    ],
)
def test_a_bad_value_names_its_variable(load, name, value, message):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        load(**{name: value})

    assert message in str(excinfo.value)


# --- secrets from files -------------------------------------------------------------


def test_secrets_may_come_from_files(load, tmp_path):
    files = {
        "SECRET_KEY_FILE": "a-key-from-a-mounted-secret\n",
        "DATABASE_URL_FILE": f"sqlite:///{tmp_path / 'from-file.sqlite3'}\n",
        "REDIS_URL_FILE": "redis://127.0.0.1:6379/7\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)

    values = load(**{name: str(tmp_path / name) for name in files})

    assert values["SECRET_KEY"] == "a-key-from-a-mounted-secret"
    assert values["DATABASES"]["default"]["NAME"] == str(tmp_path / "from-file.sqlite3")
    assert values["REDIS_URL"] == "redis://127.0.0.1:6379/7"
    assert values["CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/7"


def test_a_secret_file_satisfies_the_required_key(load, tmp_path):
    (tmp_path / "key").write_text("k" * 60)

    values = load(SECRET_KEY_FILE=str(tmp_path / "key"), KAIZEN_REQUIRE_SECRET_KEY="true")

    assert values["SECRET_KEY"] == "k" * 60


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "SECRET_KEY_FILE names '{path}', which cannot be read"),
        ("\n", "SECRET_KEY_FILE names '{path}', which is empty"),
    ],
)
def test_a_secret_file_that_cannot_be_used_is_named(load, tmp_path, content, message):
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ImproperlyConfigured) as excinfo:
        load(SECRET_KEY_FILE=str(path))

    assert message.format(path=path) in str(excinfo.value)


def test_a_secret_given_twice_is_refused(load, tmp_path):
    (tmp_path / "url").write_text("redis://127.0.0.1:6379/7")

    with pytest.raises(ImproperlyConfigured, match="set REDIS_URL or REDIS_URL_FILE, not both"):
        load(REDIS_URL="redis://127.0.0.1:6379/3", REDIS_URL_FILE=str(tmp_path / "url"))


# --- the embedded Redis of a running `make run` --------------------------------------


@pytest.fixture
def listening():
    """A server socket on loopback standing in for the embedded Redis."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def write_run_file(tmp_path: Path, url: str, pid: int) -> Path:
    # What scripts/run.py writes while it runs.
    path = tmp_path / "var" / "run" / "redis.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "pid": pid}))
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_without_redis_url_a_running_make_run_is_found(load, tmp_path, listening):
    url = f"redis://127.0.0.1:{listening}/0"
    write_run_file(tmp_path, url, os.getpid())

    values = load()

    assert values["REDIS_URL"] == url
    assert values["CELERY_BROKER_URL"] == url
    assert values["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"] == [url]


def test_redis_url_wins_over_a_running_make_run(load, tmp_path, listening):
    write_run_file(tmp_path, f"redis://127.0.0.1:{listening}/0", os.getpid())

    values = load(REDIS_URL="redis://127.0.0.1:6379/5")

    assert values["REDIS_URL"] == "redis://127.0.0.1:6379/5"


def test_without_a_running_make_run_the_default_is_used(load):
    assert load()["REDIS_URL"] == "redis://127.0.0.1:6379/0"


def test_a_file_left_by_a_stopped_make_run_is_ignored_and_said(load, tmp_path, capsys):
    path = write_run_file(tmp_path, "redis://127.0.0.1:6380/0", dead_pid())

    values = load()

    assert values["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    err = capsys.readouterr().err
    assert f"{path} names the embedded Redis of a `make run` that has stopped" in err
    assert "Set REDIS_URL to choose another" in err


def test_a_live_pid_without_a_server_is_not_taken_for_one(load, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    write_run_file(tmp_path, f"redis://127.0.0.1:{closed_port}/0", os.getpid())

    assert load()["REDIS_URL"] == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "content",
    [
        '{"url": "redis://10.1.2.3:6380/0", "pid": 1}',
        '{"url": "rediss://127.0.0.1:6380/0", "pid": 1}',
        "not json",
        '{"url": "redis://127.0.0.1:6380/0"}',
    ],
)
def test_a_run_file_naming_no_local_redis_is_ignored(load, tmp_path, capsys, content):
    path = tmp_path / "var" / "run" / "redis.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)

    assert load()["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert str(path) in capsys.readouterr().err
