"""deploy/grafana/rotator.json, offline: a Grafana dashboard that imports as is (a Prometheus
data-source variable used by every query, unique panel ids, a grid that fits), shows what issue 16
asks for, and queries only metrics, labels and label values rotator exports — the same check as
the alert rules', with Grafana's variables replaced so each query parses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy import (
    GRAFANA, GRAFANA_INTERVALS, check_promql, grafana_dashboard, grafana_queries, grafana_substitute,
    grafana_variables, rotator_series,
)

pytest.importorskip("promql_parser", reason="promql-parser is not installed (pip install promql-parser)")

DATASOURCE = "${datasource}"


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_the_dashboard_is_importable_grafana_json_with_a_prometheus_datasource_variable():
    text = GRAFANA.read_text()
    dashboard = json.loads(text)
    assert text.endswith("\n") and dashboard == json.loads(json.dumps(dashboard))
    assert dashboard["title"] and dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "no instance-specific id: it imports anywhere"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, v["name"]

    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']!r} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["description"], f"{panel['title']!r}: say what it shows"
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == {"type": "prometheus", "uid": DATASOURCE}


def test_every_dashboard_query_uses_only_what_rotator_exports():
    dashboard = grafana_dashboard()
    series = rotator_series()
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    used: set[str] = set()
    queries = grafana_queries(dashboard)
    assert len(queries) >= 15
    for where, expr in queries:
        unknown = grafana_variables(expr) - defined - GRAFANA_INTERVALS
        assert not unknown, f"{where}: undefined variables {sorted(unknown)}"
        used |= check_promql(grafana_substitute(expr), series, where)
    # what the issue asks the dashboard to show
    wanted = {
        "rotator_key_expiry_timestamp_seconds",       # days to expiry per secret
        "rotator_rotations_total",                    # rotations and failures over time
        "rotator_secret_phase",                       # phase per secret
        "rotator_run_duration_seconds_sum", "rotator_run_duration_seconds_count",   # run duration
        "rotator_provider_calls_total",               # issuer errors and 429s
        "rotator_secret_health", "rotator_events_total",                            # held revokes
        "rotator_notifications_total",                # notifications failed
    }
    assert wanted <= used, f"not on the dashboard: {sorted(wanted - used)}"


def test_the_dashboard_shows_429s_held_revokes_and_failed_notifications_by_their_values():
    exprs = " ".join(expr for _, expr in grafana_queries(grafana_dashboard()))
    assert 'rotator_provider_calls_total{status="429"}' in exprs
    assert 'health="held"' in exprs and 'action="revoke-held"' in exprs
    assert 'rotator_notifications_total{outcome="failed"}' in exprs
    assert 'result=~"failed|rolled_back"' in exprs


def test_the_dashboard_checker_catches_a_wrong_metric():
    """A control: a panel querying a metric rotator does not export fails the check."""
    dashboard = grafana_dashboard()
    panel = next(p for p in all_panels(dashboard) if p["type"] != "row")
    panel["targets"][0]["expr"] = 'rotator_key_expiry_days{secret=~"$secret"}'
    where, expr = next(q for q in grafana_queries(dashboard) if "rotator_key_expiry_days" in q[1])
    with pytest.raises(AssertionError, match="rotator_key_expiry_days is not a metric rotator exports"):
        check_promql(grafana_substitute(expr), rotator_series(), where)
