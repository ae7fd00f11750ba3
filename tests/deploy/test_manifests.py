"""deploy/kubernetes and deploy/prometheus, offline: every manifest passes `kubernetes-validate
--strict` against a pinned Kubernetes version, the manifests say what the docs promise (probes,
security context, CronJob policy, the recommended labels, the NetworkPolicy example, no secret
values), the ConfigMap's config builds a Runtime, and every alert rule parses and uses only
metrics, labels and label values rotator exports."""

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
    KUBE, ROOT, RULES, TARGET_LABELS, check_promql, container, dockerfile_stages, image_env, label_values,
    load_yaml_documents, manifests, pod_spec, rotator_series,
)

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

#: The Kubernetes version the manifests are pinned to (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.32"
POD_WORKLOADS = ("deployment.yaml", "cronjob.yaml")
#: Shipped as examples to edit, not applied by the kustomization (listed there commented out).
OPTIONAL = {"networkpolicy.yaml"}
#: The recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels).
RECOMMENDED_LABELS = ("name", "instance", "version", "component", "part-of", "managed-by")


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
                                        "service.yaml", "cronjob.yaml", "networkpolicy.yaml"}
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
    assert set(kustomization["resources"]) == set(manifests()) - OPTIONAL, "every manifest listed, nothing else"
    text = (KUBE / "kustomization.yaml").read_text()
    for name in OPTIONAL:
        assert re.search(rf"^\s*# - {re.escape(name)}$", text, re.M), f"{name}: offered, commented out"
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

#: kube-state-metrics series used by the CronJob group (not exported by rotator; names and labels
#: as kube-state-metrics documents them, which cannot be checked offline).
KUBE_STATE_METRICS = {
    "kube_job_status_failed": {"job_name", "reason"},
    "kube_cronjob_status_last_successful_time": {"cronjob"},
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
    pytest.importorskip("promql_parser", reason="promql-parser is not installed (pip install promql-parser)")
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
            used |= check_promql(rule["expr"], known, where, values)     # raises on a syntax error
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


@pytest.mark.parametrize("expr, message", [
    ("rotator_key_expiry_seconds < 86400", "is not a metric rotator exports"),
    ('increase(rotator_rotations_total{outcome="failed"}[1h])', "has no label outcome"),
    ('rotator_secret_health{health="sick"} == 1', "health=sick never occurs"),
    ('sum by (secret) (rotator_secret_phase{phase=~"grace|graceful"})', "never occurs"),
    ("rate(rotator_events_total[5m]", "unexpected|expected|unclosed|parse|syntax|invalid"),
])
def test_the_promql_checker_refuses_a_wrong_name_label_or_value(expr, message):
    """A control for check_promql, which checks the rules and the dashboard."""
    pytest.importorskip("promql_parser", reason="promql-parser is not installed (pip install promql-parser)")
    with pytest.raises(Exception, match=message):
        check_promql(expr, rotator_series(), "control")
    assert check_promql('sum(increase(rotator_rotations_total{result!~"completed"}[1h]))', rotator_series(),
                        "control") == {"rotator_rotations_total"}


# --- labels, and the NetworkPolicy example --------------------------------------------------------

def labelled_objects() -> list[tuple[str, dict[str, Any]]]:
    """(where, metadata) of every object the manifests create, pod and job templates included."""
    found = []
    for name, resource in manifests().items():
        found.append((name, resource["metadata"]))
        if resource["kind"] == "CronJob":
            found.append((f"{name} jobTemplate", resource["spec"]["jobTemplate"]["metadata"]))
        if resource["kind"] in ("CronJob", "Deployment"):
            template = (resource["spec"]["jobTemplate"]["spec"] if resource["kind"] == "CronJob" else resource["spec"])
            found.append((f"{name} pod template", template["template"]["metadata"]))
    return found


def test_every_object_carries_the_recommended_labels():
    from rotator import __version__

    (kustomization,) = load_yaml_documents(KUBE / "kustomization.yaml")
    (image,) = kustomization["images"]
    components = {}
    for where, metadata in labelled_objects():
        labels = metadata.get("labels", {})
        missing = [k for k in RECOMMENDED_LABELS if f"app.kubernetes.io/{k}" not in labels]
        assert not missing, f"{where}: no app.kubernetes.io/{', '.join(missing)}"
        assert labels["app.kubernetes.io/name"] == labels["app.kubernetes.io/part-of"] == "rotator", where
        assert labels["app.kubernetes.io/instance"] == "rotator", where
        assert labels["app.kubernetes.io/managed-by"] == "kustomize", where
        assert labels["app.kubernetes.io/version"] == __version__ == str(image["newTag"]), \
            f"{where}: the version label follows the release and the image tag"
        components.setdefault(where.split()[0], set()).add(labels["app.kubernetes.io/component"])
    assert all(len(c) == 1 for c in components.values()), f"one component per file, templates alike: {components}"
    assert components["deployment.yaml"] == components["service.yaml"] == {"daemon"}
    assert components["cronjob.yaml"] == {"cronjob"}


def test_selectors_use_only_labels_that_never_change():
    """A Deployment's selector is immutable: version (or anything an upgrade changes) stays out."""
    resources = manifests()
    stable = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
    selectors = {
        "deployment.yaml": resources["deployment.yaml"]["spec"]["selector"]["matchLabels"],
        "service.yaml": resources["service.yaml"]["spec"]["selector"],
        "networkpolicy.yaml": resources["networkpolicy.yaml"]["spec"]["podSelector"]["matchLabels"],
    }
    for name, selector in selectors.items():
        assert set(selector) <= stable, f"{name}: selects on {sorted(set(selector) - stable)}"


def _peer_ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


def test_the_network_policy_opens_only_what_rotator_needs():
    """Egress: DNS, Vault, the issuer and AWS over HTTPS, the Pushgateway; ingress: the metrics port."""
    from urllib.parse import urlsplit

    resources = manifests()
    policy = resources["networkpolicy.yaml"]
    spec = policy["spec"]
    assert policy["kind"] == "NetworkPolicy" and set(spec["policyTypes"]) == {"Ingress", "Egress"}
    for name in POD_WORKLOADS:                                   # the daemon's pods and the CronJob's
        pod_labels = (resources[name]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
                      if name == "cronjob.yaml" else resources[name]["spec"]["template"]["metadata"]["labels"])
        assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items(), f"{name}'s pods are not selected"

    # ingress: the daemon's metrics port, from Prometheus, nothing else
    metrics_port = {p["name"]: p["containerPort"] for p in container(resources["deployment.yaml"])["ports"]}["http"]
    assert spec["ingress"], "ingress is closed except for the rules listed"
    for rule in spec["ingress"]:
        assert _peer_ports(rule) == {("TCP", metrics_port)}, rule
        assert rule.get("from"), "from named peers only"
        for peer in rule["from"]:
            assert "ipBlock" not in peer and peer["podSelector"]["matchLabels"], peer

    # egress: everything the shipped config talks to
    config = tomllib.loads(config_map_toml())
    wanted = {("UDP", 53), ("TCP", 53)}
    for url in [i["base_url"] for i in config["issuers"].values()] + \
               [b["url"] for b in config["backends"].values() if "url" in b]:
        parts = urlsplit(url)
        wanted.add(("TCP", parts.port or {"https": 443, "http": 80}[parts.scheme]))
    wanted.add(("TCP", 443))                                     # AWS Secrets Manager and STS (IRSA)
    pushgateway = urlsplit(_commented_pushgateway_args()[-1])
    wanted.add(("TCP", pushgateway.port))
    opened = set().union(*(_peer_ports(rule) for rule in spec["egress"]))
    assert wanted <= opened, f"not allowed: {sorted(wanted - opened)}"
    assert opened <= wanted, f"more than needed: {sorted(opened - wanted)}"
    for rule in spec["egress"]:
        assert rule.get("to") and rule.get("ports"), "every egress rule names its peers and ports"
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is not None:                                 # the public internet, private ranges excluded
                assert _peer_ports(rule) == {("TCP", 443)}, "only HTTPS goes to addresses outside the cluster"
                assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block["except"])


def _commented_pushgateway_args() -> list[str]:
    """The CronJob's commented-out alternative `args:` line (the Pushgateway variant)."""
    text = (KUBE / "cronjob.yaml").read_text()
    (line,) = re.findall(r"^\s*# (args: \[.*--pushgateway.*\])\s*$", text, re.M)
    return yaml.safe_load(line)["args"]


def test_the_cronjobs_pushgateway_variant_is_a_valid_command_and_manifest(tmp_path):
    """Swapping the CronJob's two args lines, as its comment says, gives a valid manifest whose
    command pushes to the Pushgateway under a fixed group (not one per pod)."""
    import kubernetes_validate

    from rotator.metrics_export import INSTANCE_ENV, check_destinations

    args = _commented_pushgateway_args()
    assert args[:2] == ["rotate", "--pushgateway"] and len(args) == 3
    check_destinations(pushgateway=args[2])
    cronjob = manifests()["cronjob.yaml"]
    container(cronjob)["args"] = args
    kubernetes_validate.validate(cronjob, KUBERNETES_VERSION, strict=True)
    assert literal_env(cronjob)[INSTANCE_ENV], "a fixed Pushgateway group for every run's pod"
    result = subprocess.run([sys.executable, "-m", "rotator.cli", "rotate", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--pushgateway" in result.stdout, result.stderr[-2000:]
