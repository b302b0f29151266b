"""Alert rules and dashboard (deploy/prometheus, deploy/grafana): promtool checks and unit-tests
the rules, and every metric they name is one the reporter really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.core.broker import InProcessBroker
from services.core.db import Database
from services.reporter.api.metrics import make_registry
from tests.integration.deploy.repo import DEPLOY, DOCS
from tests.services import require_tool

pytestmark = pytest.mark.integration

RULES = DEPLOY / "prometheus" / "noduleflow-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "noduleflow-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "noduleflow-dashboard.json"
METRIC = re.compile(r"\bnoduleflow_[a-z0-9_]+\b")
#: The alerts the operations guide promises (issue: queue age, dead letters, delivery
#: failures, disk high-water, job failure rate, receiver refusals).
REQUIRED = {
    "NoduleflowQueueStale",
    "NoduleflowDeadLetters",
    "NoduleflowDeliveryFailures",
    "NoduleflowStorageHighWater",
    "NoduleflowJobFailureRate",
    "NoduleflowReceiverRefusals",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = require_tool("promtool")
    return subprocess.run(
        [exe, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60, check=False
    )


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        exprs += [target["expr"] for target in panel["targets"]]
    return exprs


@pytest.fixture
def exported(db: Database, tmp_path: Path) -> set[str]:
    """Every sample name the reporter's /metrics registry exports (counters with
    ``_total``, histograms with ``_bucket``/``_sum``/``_count``)."""
    registry = make_registry(db, InProcessBroker(), tmp_path)
    text = generate_latest(registry).decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for t in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in t["alert_rule_test"]
    }
    assert tested == {rule["alert"] for rule in _alerts()}  # every alert fires in a test


def test_rules_name_only_exported_metrics(exported: set[str]) -> None:
    names = {rule["alert"] for rule in _alerts()}
    assert REQUIRED <= names
    for rule in _alerts():
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)


def test_dashboard_parses_and_plots_what_the_alerts_watch(exported: set[str]) -> None:
    exprs = _dashboard_exprs()
    plotted: set[str] = set()
    for expr in exprs:
        used = set(METRIC.findall(expr))
        assert used and used <= exported, (expr, used - exported)
        plotted |= used
    for rule in _alerts():
        assert set(METRIC.findall(rule["expr"])) <= plotted, rule["alert"]


def test_operations_guide_explains_every_alert() -> None:
    guide = (DOCS / "operations.md").read_text()
    missing = [rule["alert"] for rule in _alerts() if f"#### {rule['alert']}" not in guide]
    assert missing == [], f"explain these alerts in docs/operations.md, Alerts: {missing}"
