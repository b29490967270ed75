"""What ships for operators (deploy/): the alert rules pass Prometheus' own checks
and unit tests, the example scrape config is valid, and the dashboard and the rules
name only series /metrics exposes. Also: `make run` wipes the metrics directory."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.boards.test_run_script import load_run_module

BASE_DIR = Path(__file__).resolve().parents[2]
DEPLOY = BASE_DIR / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
TOKEN = "deploy-test-token"
SERIES = re.compile(r"\b((?:kaizen|gen_ai)_[a-z_]+)\b")
# The GenAI attributes as labels, which the pattern above also matches.
LABELS = {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_checks_the_alert_rules():
    result = promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


@needs_promtool
def test_the_alert_rules_fire_on_their_unit_tests():
    # alerts_test.yml: each alert on series written by hand, with its labels and text.
    result = promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_example_scrape_config_is_valid(tmp_path):
    # promtool checks the token file exists: the example's path, pointed at a real file.
    token = tmp_path / "kaizen-metrics-token"
    token.write_text(TOKEN)
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "credentials_file: /etc/prometheus/kaizen-metrics-token" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/kaizen-metrics-token", str(token))
    )
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")

    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def exposed(client, settings, db) -> set[str]:
    """Every sample name the scrape can carry (a family with no samples yet included)."""
    settings.KAIZEN_METRICS_TOKEN = TOKEN
    settings.KAIZEN_METRICS_ALLOW = []
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in text_string_to_metric_families(response.content.decode()):
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_the_dashboard_uses_only_exposed_series(exposed):
    dashboard = json.loads((DEPLOY / "grafana" / "kaizen.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]

    used = {name for expr in exprs for name in SERIES.findall(expr)}
    assert used - LABELS - exposed == set()
    # The flow, andon and model sections are all there.
    assert {
        "kaizen_column_wip",
        "kaizen_line_stops_active",
        "gen_ai_client_operation_duration_seconds_bucket",
    } <= used
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)


def test_the_alert_rules_use_only_exposed_series(exposed):
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = re.findall(r"expr: \|\n((?:\s{10}.*\n)+)|expr: (.*)", rules)
    text = "\n".join(block or line for block, line in exprs)
    assert len(exprs) == 7 and "kaizen_line_stops_active" in text

    assert set(SERIES.findall(text)) - LABELS - exposed == set()


def test_make_run_wipes_the_metrics_directory_of_an_earlier_run(tmp_path):
    run = load_run_module()
    earlier = tmp_path / "run" / "prometheus"
    earlier.mkdir(parents=True)
    (earlier / "counter_123.db").write_bytes(b"old")
    (earlier / "histogram_456.db").write_bytes(b"old")
    (earlier / "notes.txt").write_text("not ours")

    path = run.prepare_metrics_dir({}, tmp_path)

    assert path == earlier
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt"]
    # A directory named in the environment is used (and wiped) instead.
    chosen = tmp_path / "chosen"
    assert run.prepare_metrics_dir({"PROMETHEUS_MULTIPROC_DIR": str(chosen)}, tmp_path) == chosen
    assert chosen.is_dir()
