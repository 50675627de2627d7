"""The deployment files stay true to the code: compose, its policy, the dashboard, alert rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway.policy.model import load_policy
from gateway.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
_LABEL_SETS = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(gateway_[a-z_]+)(?:\{([^}]*)\})?")


def _metrics() -> dict[str, set[str]]:
    """Every metric the gateway exports, with its label names."""
    metrics = Metrics()
    return {
        value._name: set(value._labelnames)  # prometheus_client keeps them only here
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
    }


def _expressions() -> list[str]:
    dashboard = orjson.loads((DEPLOY / "grafana/dashboards/gateway.json").read_bytes())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    return exprs


def _base(name: str, known: dict[str, set[str]]) -> str:
    if name in known:
        return name
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in known:
            return name.removesuffix(suffix)
    raise AssertionError(f"{name} is not a metric the gateway exports")


@pytest.mark.parametrize("expr", _expressions())
def test_dashboard_and_alert_queries_name_real_metrics_and_labels(expr: str) -> None:
    known = _metrics()
    used = [(_base(name, known), selector) for name, selector in _SELECTOR.findall(expr)]
    assert used, expr
    labels = set().union(*(known[name] for name, _ in used)) | {"le"}
    for _, selector in used:
        for matcher in filter(None, (part.strip() for part in selector.split(","))):
            assert re.split(r"[=!~]", matcher)[0] in labels, (matcher, expr)
    for group in _LABEL_SETS.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            assert label in labels, (label, expr)


def test_the_compose_policy_is_valid() -> None:
    policy = load_policy(DEPLOY / "policy.yaml")
    assert policy.cache is not None
    assert policy.knowledge is not None


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_every_compose_service_has_a_health_check_or_is_a_one_shot() -> None:
    for name, service in _compose()["services"].items():
        one_shot = service.get("restart") == "no"
        assert one_shot or "healthcheck" in service, name


def test_the_gateway_service_is_wired_to_redis_qdrant_and_its_policy() -> None:
    gateway = _compose()["services"]["gateway"]
    env = dict(item.partition("=")[::2] for item in gateway["environment"])
    assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert env["GATEWAY_QDRANT_URL"] == "http://qdrant:6333"
    mounted = {volume.split(":")[1]: volume.split(":")[0] for volume in gateway["volumes"]}
    assert mounted[env["GATEWAY_CONFIG"]] == "./deploy/policy.yaml"
    assert set(gateway["depends_on"]) == {"redis", "qdrant"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_validates_with_every_profile() -> None:
    command = ["docker-compose", "-f", str(ROOT / "compose.yaml")]
    command += ["--profile", "ollama", "--profile", "monitoring", "config", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
