"""monitoring/ stays usable: promtool accepts the rules, their unit tests and the scrape
config; the Grafana dashboard is provisionable from its file; and every metric that a rule or
a panel names is one the API's /metrics really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app_patch.metrics import SWEEP_STATUS_NAME, Metrics, record_sweep
from app_patch.settings import PROJECT_ROOT

MONITORING = PROJECT_ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "media-analysis.json"
PROMTOOL_TIMEOUT_S = 60

# Names in an expression that are not metrics. Followed by "(" they must be functions.
FUNCTIONS = frozenset(
    {
        "sum", "avg", "max", "min", "count", "rate", "irate", "increase", "deriv", "delta",
        "histogram_quantile", "clamp_min", "clamp_max", "vector", "time", "abs", "topk",
    }
)  # fmt: skip
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool"})
KEYWORDS |= {"and", "or", "unless", "offset"}
SCRAPE_SERIES = frozenset({"up"})  # added by Prometheus to every target, not by the API


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: scripts/bootstrap installs Debian's `prometheus` package "
            "(as root: apt-get install prometheus)"
        )
    return found


def run_promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [promtool(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, matchers, ranges, grouping
    clauses, Grafana variables and numbers removed first)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", "", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(\(?))", expr):
        token, call = match.group(0), match.group(1)
        if call:
            assert token in FUNCTIONS, f"unknown PromQL function {token!r} in {expr!r}"
        elif token not in KEYWORDS:
            names.add(token)
    return names


def exported_series(exposition: str) -> set[str]:
    """Every series name an exposition offers, a family's declared ones included (a labelled
    counter with no child yet still names ``<family>_total``)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))  # a collapsed row holds its panels


def every_expr() -> dict[str, str]:
    """``{where: expr}`` for each alert rule and each dashboard target."""
    found = {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    for panel in panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["query"]["query"])
            assert metric, variable
            found[f"variable {variable['name']}"] = metric.group(1)
    return found


# ------------------------------------------------------------------- promtool


def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS: 10 rules found" in run_promtool("check", "rules", ALERTS.name).stdout


def test_promtool_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", "alerts_test.yml").stdout


def test_every_alert_is_complete_and_tested_both_ways() -> None:
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["for"] and rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no case fires it"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no case leaves it quiet"
    text = ALERTS.read_text().lower()
    assert not re.search(r"password|secret|token|://[^/\s]*@", text)


def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    """The full check (rule files and credentials file included), on a copy whose credentials
    file points at a stand-in key, as a mounted secret would be."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    # One target per API replica: every replica answers the DNS name on af-network.
    assert job["dns_sd_configs"] == [
        {"names": ["media-analysis-api"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    ]
    assert job["metrics_path"] == "/metrics" and config["rule_files"] == ["alerts.yml"]
    assert job["authorization"]["type"] == "Bearer"
    key = tmp_path / "api-key"
    key.write_text("stand-in-key\n")
    job["authorization"]["credentials_file"] = str(key)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    checked = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS: 10 rules found" in checked.stdout


# ------------------------------------------------------------------- Grafana


def test_dashboard_is_provisionable_from_its_file() -> None:
    board = dashboard()
    assert board["uid"] == "media-analysis-api" and board["id"] is None
    assert "__inputs" not in board and "${DS_" not in DASHBOARD.read_text()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    shown = [p for p in panels(board["panels"]) if p["type"] != "row"]
    assert len(shown) >= 15
    for panel in shown:
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"] == wanted for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids))


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    (source,) = yaml.safe_load((provisioning / "datasources.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


# ------------------------------------------------------------------- metric names


def test_metric_names_parser() -> None:
    expr = (
        'sum without (method, route, status) (rate(a_total{status=~"5..", route="/x/{id}"}[5m]))'
        ' / on (job) group_left max by (le) (b_bucket{instance=~"$instance"}[$__rate_interval])'
        " > 0.95 and time() - c_seconds > 1e3"
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "c_seconds"}
    with pytest.raises(AssertionError, match="unknown PromQL function"):
        metric_names("no_such_function(a_total)")


def test_every_expression_names_only_exported_metrics(tmp_path: Path) -> None:
    """Against the API's own registry and collectors, fed figures as the runtime feeds them
    (tests/integration/api/test_observability.py scrapes the same families over HTTP)."""
    exported = exported_series(in_process_exposition(tmp_path)) | SCRAPE_SERIES
    unknown = {
        where: sorted(metric_names(expr) - exported)
        for where, expr in every_expr().items()
        if metric_names(expr) - exported
    }
    assert not unknown, unknown
    used = set().union(*(metric_names(expr) for expr in every_expr().values()))
    assert used >= {
        "ma_breaker_state",
        "ma_outbox_backlog",
        "ma_outbox_failed",
        "ma_db_pool_timeouts_total",
        "ma_http_request_duration_seconds_count",
        "ma_http_request_duration_seconds_bucket",
        "ma_cache_operations_total",
        "ma_storage_volume_used_bytes",
        "ma_storage_volume_available_bytes",
        "ma_retention_last_sweep_errors",
        "ma_retention_deletions_total",
        "ma_readiness_state",
    }


def in_process_exposition(root: Path) -> str:
    from app_patch.metrics import LiveSources, PoolFigures, RetentionTotals

    metrics = Metrics()
    metrics.attach(
        LiveSources(
            pool=lambda: PoolFigures(size=5, checked_out=1, overflow=0, max_connections=50),
            breakers=lambda: {"postgres": "closed", "redis": "open"},
            cache_counters=lambda: {"job": {"hit": 3, "miss": 1, "error": 0, "bypass": 0}},
            outbox_backlog=lambda: 0,
            outbox_failed=lambda: 0,
            storage_usage=lambda: {"uploads": (1, 10)},
            retention=lambda: RetentionTotals({"tmp": (1, 5)}),
        )
    )
    metrics.request_seconds.labels("GET", "/analyses", "200").observe(0.01)
    metrics.observe_pool_checkout(0.001, timed_out=False)
    metrics.observe_readiness("ok", {"postgres": "ok"})
    record_sweep(root, 0)
    return metrics.render(root).decode()


# ------------------------------------------------------------------- scrape-time figures


def scrape(metrics: Metrics, root: Path) -> dict[str, float]:
    exposition = metrics.render(root).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if not sample.labels
    }


def test_volume_and_last_sweep_figures_come_from_the_storage_root(tmp_path: Path) -> None:
    import os

    metrics = Metrics()
    assert "ma_storage_volume_size_bytes" not in scrape(metrics, tmp_path / "no-such-root")
    figures = scrape(metrics, tmp_path)
    st = os.statvfs(tmp_path)
    assert figures["ma_storage_volume_size_bytes"] == st.f_blocks * st.f_frsize
    used = figures["ma_storage_volume_used_bytes"]
    assert 0 < used <= figures["ma_storage_volume_size_bytes"]
    assert "ma_retention_last_sweep_errors" not in figures  # no sweep has finished here

    record_sweep(tmp_path, 3)
    figures = scrape(metrics, tmp_path)
    assert figures["ma_retention_last_sweep_errors"] == 3
    assert figures["ma_retention_last_sweep_timestamp_seconds"] > 1.7e9
    (tmp_path / SWEEP_STATUS_NAME).write_text('{"errors": "many"')  # torn or foreign
    assert "ma_retention_last_sweep_errors" not in scrape(metrics, tmp_path)


def test_an_unwritable_root_never_fails_a_sweep_or_a_scrape(tmp_path: Path) -> None:
    record_sweep(tmp_path / "gone" / "root", 1)  # logged, not raised
    metrics = Metrics()
    metrics.observe_readiness("degraded", {"postgres": "down", "storage": "ok"})
    figures = scrape(metrics, tmp_path / "gone")
    assert figures["ma_readiness_state"] == 1
    assert "ma_storage_volume_used_bytes" not in figures


# ------------------------------------------------------------------- the real /metrics


async def test_the_running_api_exports_every_name_over_http(
    migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The app on the suite's PostgreSQL and Redis, after a real sweep (the tmp policy, which
    only touches this root): /metrics over HTTP offers every name the rules and panels use."""
    from app_patch.retention import Policy, run_sweep
    from tests.integration.api.harness import make_settings, running_app

    settings = make_settings(db_url=migrated_url, redis_url=redis_url, data_dir=tmp_path)
    async with running_app(settings) as live, live.client() as http:
        assert (await http.get("/analyses?limit=1")).status_code == 200
        report = await run_sweep(settings, migrated_url, policies=(Policy.tmp,))
        assert report.error_count == 0
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200
    exported = exported_series(scraped.text) | SCRAPE_SERIES
    for where, expr in every_expr().items():
        assert metric_names(expr) <= exported, (where, metric_names(expr) - exported)
    figures = {
        s.name: s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
        if not s.labels
    }
    assert figures["ma_readiness_state"] == 0
    assert figures["ma_retention_last_sweep_errors"] == 0
    assert figures["ma_storage_volume_size_bytes"] >= figures["ma_storage_volume_used_bytes"] > 0
