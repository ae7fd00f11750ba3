"""deploy/kubernetes and deploy/prometheus, offline: every manifest passes `kubernetes-validate
--strict` against a pinned Kubernetes version, the manifests say what the docs promise (probes,
security context, CronJob policy, no secret values), the ConfigMap's config builds a Runtime,
and every alert rule parses and uses only metrics, labels and label values rotator exports."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rotator.timeutil import parse_duration
from tests.deploy import (
    KUBE, ROOT, RULES, container, dockerfile_stages, image_env, load_yaml_documents, manifests, pod_spec,
)

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

#: The Kubernetes version the manifests are pinned to (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.32"
POD_WORKLOADS = ("deployment.yaml", "cronjob.yaml")


def kubernetes_validate() -> str:
    beside = Path(sys.executable).parent / "kubernetes-validate"
    found = str(beside) if beside.exists() else shutil.which("kubernetes-validate")
    if found is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return found


def newest_schema_version() -> str:
    import kubernetes_validate

    return ".".join(kubernetes_validate.latest_version().split(".")[:2])


def config_map_toml() -> str:
    return manifests()["configmap.yaml"]["data"]["config.toml"]


def literal_env(resource: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(resource).get("env", []) if "value" in e}


# --- schema validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", [KUBERNETES_VERSION, "newest"])
def test_every_manifest_passes_kubernetes_validate_strict(version):
    version = newest_schema_version() if version == "newest" else version
    files = sorted(KUBE / name for name in manifests())
    assert {f.name for f in files} >= {"serviceaccount.yaml", "configmap.yaml", "deployment.yaml",
                                        "service.yaml", "cronjob.yaml"}
    result = subprocess.run([kubernetes_validate(), "--strict", "-k", version, *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for f in files:
        assert re.search(rf"{re.escape(str(f))} passed for resource \S+ against version {re.escape(version)}",
                         output), f"{f.name}:\n{output}"
    assert "WARN" not in output and "ERROR" not in output, output


def test_strict_validation_rejects_an_unknown_field():
    """A control: the validator really is strict (a misspelt securityContext field fails)."""
    import kubernetes_validate

    deployment = manifests()["deployment.yaml"]
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    container(deployment)["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_ties_every_manifest_and_sets_namespace_and_image():
    (kustomization,) = load_yaml_documents(KUBE / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization["resources"]) == set(manifests()), "every manifest listed, nothing else"
    assert kustomization["namespace"]
    resources = manifests()
    for name, resource in resources.items():
        assert "namespace" not in resource["metadata"], f"{name}: the kustomization sets the namespace"
    image_names = {entry["name"] for entry in kustomization["images"]}
    for name in POD_WORKLOADS:
        image = container(resources[name])["image"]
        assert image.partition(":")[0] in image_names, f"{name}: image {image} not rewritten by the kustomization"


# --- the workloads --------------------------------------------------------------------------------

def test_the_deployment_probes_healthz_and_readyz_on_the_daemon_port():
    resources = manifests()
    deployment, service = resources["deployment.yaml"], resources["service.yaml"]
    c = container(deployment)
    assert c.get("args") == ["daemon"] and "command" not in c, "the image's ENTRYPOINT runs rotator"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert ports[c[probe]["httpGet"]["port"]] == 9464
    host, _, port = literal_env(deployment)["ROTATOR_DAEMON__HTTP_ADDRESS"].rpartition(":")
    assert host == "0.0.0.0" and int(port) == 9464, "the daemon listens where the probes knock"

    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ports and service_port["name"] == "metrics"
    assert service["spec"]["publishNotReadyAddresses"] is True, "metrics stay scraped while a provider is down"
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_the_cronjob_runs_rotate_never_twice_at_once():
    cronjob = manifests()["cronjob.yaml"]
    spec, job = cronjob["spec"], cronjob["spec"]["jobTemplate"]["spec"]
    assert container(cronjob).get("args") == ["rotate"] and "command" not in container(cronjob)
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 60 <= spec["startingDeadlineSeconds"] <= 3600
    assert 1 <= job["backoffLimit"] <= 6
    assert 1 <= spec["successfulJobsHistoryLimit"] <= 10 and 1 <= spec["failedJobsHistoryLimit"] <= 10
    assert job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    # A configuration error (exit 2) is not retried.
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    # At least hourly: a rotation starts within one period of its due instant (lead time 14d).
    assert re.fullmatch(r"\d{1,2} \* \* \* \*", spec["schedule"]), spec["schedule"]


@pytest.mark.parametrize("name", POD_WORKLOADS)
def test_pods_run_locked_down(name):
    resources = manifests()
    resource = resources[name]
    pod, c = pod_spec(resource), container(resource)
    _, stages = dockerfile_stages()
    uid = int(stages[-1].last("USER").partition(":")[0])

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid, "the image's numeric user"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True and security.get("privileged", False) is False
    assert security["capabilities"] == {"drop": ["ALL"]}

    # No Kubernetes API token (rotator never calls the API); only Vault's audience-bound token.
    assert resources["serviceaccount.yaml"]["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == resources["serviceaccount.yaml"]["metadata"]["name"]
    assert pod["enableServiceLinks"] is False

    # Writable: /tmp only (HOME and TMPDIR point there in the image); every other mount read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    env = image_env(stages[-1])
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")

    # The config file is where ROTATOR_CONFIG says, from the ConfigMap.
    config_path = Path(literal_env(resource)["ROTATOR_CONFIG"])
    config_volume = volumes[mounts[str(config_path.parent)]["name"]]
    assert config_volume["configMap"]["name"] == resources["configmap.yaml"]["metadata"]["name"]
    assert config_path.name in resources["configmap.yaml"]["data"]

    # Vault's Kubernetes auth reads the projected token where the config says.
    vault = tomllib.loads(config_map_toml())["backends"]["vault"]["auth"]
    token = Path(vault["jwt_file"])
    projected = volumes[mounts[str(token.parent)]["name"]]["projected"]["sources"][0]["serviceAccountToken"]
    assert projected["path"] == token.name and projected["audience"] == "vault"
    assert projected["expirationSeconds"] <= 3600

    # Sized from the measured idle daemon (~51 MiB RSS, ~0 CPU), with room for a run.
    resources_ = c["resources"]
    assert set(resources_["requests"]) == set(resources_["limits"]) == {"cpu", "memory"}
    request, limit = (_mebibytes(resources_[k]["memory"]) for k in ("requests", "limits"))
    assert 64 <= request <= limit <= 512


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def test_the_daemon_stops_before_the_kubelet_kills_it():
    deployment = manifests()["deployment.yaml"]
    config = tomllib.loads(config_map_toml())
    shutdown = parse_duration(config["daemon"]["shutdown_timeout"]).total_seconds()
    assert shutdown + 5 <= pod_spec(deployment)["terminationGracePeriodSeconds"]


def test_no_secret_value_ships_with_the_manifests():
    resources = manifests()
    assert not [n for n, r in resources.items() if r["kind"] == "Secret"], "the Secret is created by the operator"
    for name in POD_WORKLOADS:
        env = {e["name"]: e for e in container(resources[name])["env"]}
        assert "QUIVA_API_KEY" not in env, "the admin key lives in a store rotator writes, not in a Secret"
        for entry in env.values():
            if re.search(r"KEY|TOKEN|SECRET|PASSWORD", entry["name"]):
                assert "value" not in entry, f"{name}: {entry['name']} has a literal value"
    from rotator.redact import redact

    for name in resources:
        text = (KUBE / name).read_text()
        assert redact(text) == text, f"{name}: something shaped like a key value"
    # Every credential in the config is a reference, never a value.
    config = tomllib.loads(config_map_toml())
    for issuer in config["issuers"].values():
        assert set(issuer["admin_key"]) <= {"env", "file", "backend", "path"}
    for backend in config["backends"].values():
        auth = backend.get("auth", {})
        for key in ("token", "role_id", "secret_id"):
            assert not isinstance(auth.get(key), str), f"a literal {key}"


def test_the_shipped_config_rotates_the_rotators_own_admin_key():
    """Issue 13: the admin key expires like any key, so the shipped config keeps it in a store
    rotator can write and manages it as a secret (self-rotation)."""
    from rotator import config as configuration
    from rotator.runtime import Runtime

    runtime = Runtime(configuration.load(data=tomllib.loads(config_map_toml())))
    try:
        for name, issuer in runtime.issuers.items():
            assert "backend" in issuer.credential, f"{name}: admin key not kept in a store"
            managing = [s.name for s in runtime.secrets if issuer in s.signs_in]
            assert managing == ["quiva-admin"], f"{name}: no managed secret rotates its admin key"
    finally:
        runtime.close()


def test_the_config_map_config_builds_a_runtime_with_the_deployments_environment(monkeypatch):
    """Providers validate their own settings (no network): every field is right for real."""
    from rotator import config
    from rotator.runtime import Runtime

    for name in [n for n in __import__("os").environ if n.startswith("ROTATOR_")]:
        monkeypatch.delenv(name)
    _, stages = dockerfile_stages()
    container_env = {**image_env(stages[-1]), **literal_env(manifests()["deployment.yaml"])}
    for name, value in container_env.items():
        if name.startswith("ROTATOR_") and name != "ROTATOR_CONFIG":
            monkeypatch.setenv(name, value)

    settings = config.load(data=tomllib.loads(config_map_toml()))
    runtime = Runtime(settings)
    try:
        assert {n: type(b).__name__ for n, b in runtime.backends.items()} == {
            "vault": "VaultKVBackend", "aws": "SecretsManagerBackend"}
        assert [type(i).__name__ for i in runtime.issuers.values()] == ["QuivaIssuer"]
        assert [s.name for s in runtime.secrets] == ["quiva-admin", "prod-web-app", "prod-batch"]
        assert all(s.primary.backend.name == "vault" for s in runtime.secrets)
    finally:
        runtime.close()
    assert settings.daemon.http_address == "0.0.0.0:9464"
    assert settings.audit.stdout is True and settings.audit.path is None, "no file: the root fs is read-only"


# --- alert rules ----------------------------------------------------------------------------------

#: Labels Prometheus adds to every scraped series (target labels of common scrape configs).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
#: kube-state-metrics series used by the CronJob group (not exported by rotator; names and labels
#: as kube-state-metrics documents them, which cannot be checked offline).
KUBE_STATE_METRICS = {
    "kube_job_status_failed": {"job_name", "reason"},
    "kube_cronjob_status_last_successful_time": {"cronjob"},
}


def rotator_series() -> dict[str, set[str]]:
    """Every series name rotator's daemon exports, with its label names (from rotator/metrics.py)."""
    from rotator.metrics import Metrics

    metrics = Metrics(process=True)
    series: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        # prometheus_client keeps a metric's label names in _labelnames (no public accessor).
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.collect() if hasattr(collector, "collect") else ():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            for suffix in suffixes:
                series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    for family in metrics.registry.collect():       # the process collector and the build info
        for sample in family.samples:
            series.setdefault(sample.name, set(sample.labels))
    return series


def label_values() -> dict[tuple[str, str], set[str]]:
    from rotator.metrics import HEALTHS, PHASES, ROTATION_RESULTS

    return {
        ("rotator_secret_health", "health"): set(HEALTHS),
        ("rotator_secret_phase", "phase"): set(PHASES),
        ("rotator_rotations_total", "result"): set(ROTATION_RESULTS.values()),
        ("rotator_reconciles_total", "result"): {"ok", "failed"},
        ("rotator_alerts_total", "outcome"): {"sent", "failed", "suppressed"},
    }


def heading_anchors(markdown: str) -> set[str]:
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_alert_rules_parse_and_use_only_real_metrics_labels_and_values():
    promql = pytest.importorskip("promql_parser", reason="promql-parser is not installed (pip install promql-parser)")
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    series, values = rotator_series(), label_values()
    assert "rotator_key_expiry_timestamp_seconds" in series and "process_resident_memory_bytes" in series
    anchors = heading_anchors((ROOT / "docs" / "operations.md").read_text())
    alerts, used = [], set()
    for group in document["groups"]:
        known = {**series, **KUBE_STATE_METRICS} if group["name"] == "rotator-cronjob" else series
        for rule in group["rules"]:
            where = f"{group['name']}/{rule.get('alert')}"
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, where
            alerts.append(rule["alert"])
            assert re.fullmatch(r"Rotator[A-Za-z]+", rule["alert"]), where
            assert rule["labels"]["severity"] in ("warning", "critical"), where
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], where
            if "for" in rule:
                assert re.fullmatch(r"(\d+[smhd])+", rule["for"]), where
            expr = promql.parse(rule["expr"])                  # raises on a syntax error

            def visit(node: Any, where: str = where, known: dict[str, set[str]] = known) -> None:
                if not isinstance(node, promql.VectorSelector):
                    return
                assert node.name in known, f"{where}: {node.name} is not a metric rotator exports"
                used.add(node.name)
                for matcher in node.matchers.matchers:
                    assert matcher.name in known[node.name] | TARGET_LABELS, \
                        f"{where}: {node.name} has no label {matcher.name}"
                    allowed = values.get((node.name, matcher.name))
                    if allowed is not None:
                        chosen = matcher.value.split("|") if "Re" in str(matcher.op) else [matcher.value]
                        assert set(chosen) <= allowed, f"{where}: {matcher.name}={matcher.value} never occurs"

            promql.walk(expr, visit)
            for template_label in re.findall(r"\$labels\.(\w+)", str(rule["annotations"])):
                selectors = re.findall(r"[a-z_]+(?=\{|\[| |$)", rule["expr"])
                assert any(template_label in known.get(s, set()) | TARGET_LABELS for s in selectors), \
                    f"{where}: the annotation uses $labels.{template_label}, which the series lack"
            for anchor in re.findall(r"docs/operations\.md#([\w-]+)", str(rule["annotations"])):
                assert anchor in anchors, f"{where}: docs/operations.md has no section #{anchor}"
    assert len(alerts) == len(set(alerts)), "alert names are unique"
    # The three the issue asks for: expiry approaching while not rotated, failures, drift.
    assert {"rotator_key_expiry_timestamp_seconds", "rotator_rotations_total", "rotator_secret_health",
            "rotator_backend_drift"} <= used


def test_the_rule_checker_catches_a_wrong_metric_name():
    """A control: a misspelt metric in an expression is not among the exported series."""
    promql = pytest.importorskip("promql_parser", reason="promql-parser is not installed (pip install promql-parser)")
    series = rotator_series()
    found = []
    promql.walk(promql.parse('rotator_key_expiry_seconds - time() < 86400 and rotator_backend_drift == 1'),
                lambda node: found.append(node.name) if isinstance(node, promql.VectorSelector) else None)
    assert found == ["rotator_key_expiry_seconds", "rotator_backend_drift"]
    assert [name in series for name in found] == [False, True]
