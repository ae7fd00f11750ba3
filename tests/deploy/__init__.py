"""Tests of the deployment files: Dockerfile, Kubernetes manifests, Prometheus rules.

Helpers shared by the modules here: reading the Dockerfile the way Docker does (instructions,
stages, the final image's ENV / ENTRYPOINT / CMD / USER) and reading the manifests.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
KUBE = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "deploy" / "prometheus" / "rotator-rules.yaml"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_stages(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue                                  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = parts[0]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=_expand(base, args), name=name))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), ""), text)


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT / CMD in exec (JSON) form; raises if it is the shell form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def image_env(stage: Stage) -> dict[str, str]:
    """The ENV of a stage, in order, with ${VAR} expanded against what came before."""
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = _expand(value, env)
    return env


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes resource in deploy/kubernetes (kustomization.yaml aside), by file name."""
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs = load_yaml_documents(path)
        assert len(docs) == 1, f"{path.name}: one resource per file"
        found[path.name] = docs[0]
    return found


def pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    if resource["kind"] == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return resource["spec"]["template"]["spec"]


def container(resource: dict[str, Any], name: str = "rotator") -> dict[str, Any]:
    return next(c for c in pod_spec(resource)["containers"] if c["name"] == name)


# --- PromQL: the alert rules and the Grafana dashboard query only what rotator exports ------------

GRAFANA = ROOT / "deploy" / "grafana" / "rotator.json"
#: Labels Prometheus adds to every scraped series (target labels of common scrape configs; the
#: Pushgateway's grouping key job/instance).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}


def rotator_series() -> dict[str, set[str]]:
    """Every series name rotator exports — the daemon's /metrics, and the one-shot run's export
    (rotator.metrics_export fills the same rotator.metrics.Metrics) — with its label names."""
    from rotator.metrics import Metrics

    metrics = Metrics(process=True)
    series: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        # prometheus_client keeps a metric's label names in _labelnames (no public accessor).
        if not hasattr(collector, "_labelnames"):
            continue
        labels = set(collector._labelnames)
        for family in collector.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            for suffix in suffixes:
                series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    for family in metrics.registry.collect():       # the process collector and the build info
        for sample in family.samples:
            series.setdefault(sample.name, set(sample.labels))
    return series


def label_values() -> dict[tuple[str, str], set[str]]:
    """The values a label can take, where rotator fixes them."""
    from rotator.metrics import HEALTHS, PHASES, ROTATION_RESULTS

    return {
        ("rotator_secret_health", "health"): set(HEALTHS),
        ("rotator_secret_phase", "phase"): set(PHASES),
        ("rotator_rotations_total", "result"): set(ROTATION_RESULTS.values()),
        ("rotator_reconciles_total", "result"): {"ok", "failed"},
        ("rotator_alerts_total", "outcome"): {"sent", "failed", "suppressed"},
        ("rotator_notifications_total", "outcome"): {"sent", "failed"},
        ("rotator_provider_up", "kind"): {"issuer", "backend"},
        ("rotator_run_duration_seconds_bucket", "kind"): {"reconcile", "wake", "rotate"},
        ("rotator_run_duration_seconds_sum", "kind"): {"reconcile", "wake", "rotate"},
        ("rotator_run_duration_seconds_count", "kind"): {"reconcile", "wake", "rotate"},
        ("rotator_last_run_timestamp_seconds", "kind"): {"reconcile", "wake", "rotate"},
    }


def check_promql(expr: str, known: dict[str, set[str]], where: str,
                 values: dict[tuple[str, str], set[str]] | None = None) -> set[str]:
    """Parse ``expr`` (raises on a syntax error) and assert that every selector names a known
    series, matches only labels it has and, where the values are fixed, only values it takes.
    Returns the series names used."""
    import promql_parser as promql

    values = label_values() if values is None else values
    used: set[str] = set()

    def visit(node: Any) -> None:
        if not isinstance(node, promql.VectorSelector):
            return
        assert node.name in known, f"{where}: {node.name} is not a metric rotator exports"
        used.add(node.name)
        for matcher in node.matchers.matchers:
            assert matcher.name in known[node.name] | TARGET_LABELS, f"{where}: {node.name} has no label {matcher.name}"
            allowed = values.get((node.name, matcher.name))
            if allowed is not None and "Not" not in str(matcher.op):
                chosen = matcher.value.split("|") if "Re" in str(matcher.op) else [matcher.value]
                assert set(chosen) <= allowed, f"{where}: {matcher.name}={matcher.value} never occurs"

    promql.walk(promql.parse(expr), visit)
    return used


def grafana_dashboard() -> dict[str, Any]:
    return json.loads(GRAFANA.read_text())


#: Grafana's built-in interval variables, and a stand-in for each when the query is parsed.
GRAFANA_INTERVALS = {"__interval", "__rate_interval", "__range", "__interval_ms", "__range_s"}


def grafana_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard (panels, rows' panels, annotations, template
    variables' label_values() as the selector it stands for), Grafana's variables left in place
    (:func:`grafana_substitute` makes them parse)."""
    found: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            panels(panel.get("panels", []))
            for t in panel.get("targets", []):
                found.append((f"panel {panel['title']!r} query {t.get('refId')}", t["expr"]))

    panels(dashboard.get("panels", []))
    for a in dashboard.get("annotations", {}).get("list", []):
        if "expr" in a:
            found.append((f"annotation {a['name']!r}", a["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        query = v.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((\w+)\s*,\s*(\w+)\)", text or "") if v["type"] == "query" else None
        if v["type"] == "query":
            assert match, f"variable {v['name']}: only label_values(metric, label) queries are checked"
            found.append((f"variable {v['name']!r}", f"group by ({match.group(2)}) ({match.group(1)})"))
    return found


def grafana_substitute(expr: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return "5m" if name in GRAFANA_INTERVALS else ".*"
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def grafana_variables(expr: str) -> set[str]:
    return {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", expr)}
