"""Deployment artefacts: compose, Kubernetes, Dockerfiles, systemd units and settings names.

Validated offline with the real tools (check-jsonschema's vendored compose spec, Debian's
docker-compose, kubernetes-validate, hadolint, systemd-analyze); no container engine needed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from services.core.settings import Settings
from tests.integration.deploy.repo import (
    COMPOSE,
    DEPLOY,
    DOCS,
    ENV_EXAMPLE,
    K8S,
    ORTHANC_DIR,
    ROOT,
    SETTINGS_ENV,
    SYSTEMD,
    dockerfile_instructions,
    dockerignore_patterns,
    env_file,
    ignored_by_docker,
)
from tests.services import require_tool

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
SECRETS = (
    "POSTGRES_PASSWORD",
    "RABBITMQ_PASSWORD",
    "NODULEFLOW_API_TOKENS",
    "ORTHANC_ADMIN_PASSWORD",
)


def _tool(name: str) -> str:
    local = VENV_BIN / name
    return str(local) if local.exists() else require_tool(name)


def _run(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in _k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---------------------------------------------------------------------------------- compose


def test_compose_matches_the_compose_spec() -> None:
    result = _run(
        _tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_the_file_and_refuses_missing_secrets(tmp_path: Path) -> None:
    exe = require_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    ok = _run(exe, "--env-file", str(ENV_EXAMPLE), "config", "-q", env=env)
    assert ok.returncode == 0, ok.stderr
    empty = tmp_path / "empty.env"
    empty.write_text("")
    missing = _run(exe, "--env-file", str(empty), "config", "-q", env=env)
    assert missing.returncode != 0
    assert "Missing mandatory value" in missing.stderr


def test_compose_wires_the_distributed_form() -> None:
    services = _compose()["services"]
    assert {"rabbitmq", "postgres", "orthanc", "migrate", "receiver", "worker", "reporter"} <= set(
        services
    )
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("receiver", "worker", "reporter"):
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "noduleflow-data:/var/lib/noduleflow" in service["volumes"], name
        assert service["environment"]["NODULEFLOW_STORAGE_DIR"] == "/var/lib/noduleflow/storage"
        assert service["read_only"] is True
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "11112:11112" in services["receiver"]["ports"]
    assert any(str(p).endswith(":8000:8000") for p in services["reporter"]["ports"])
    for name in ("rabbitmq", "postgres", "receiver", "reporter"):
        assert services[name]["healthcheck"]["test"], name
    assert "management" in services["rabbitmq"]["image"]


def test_secrets_are_not_committed_and_placeholders_are_refused() -> None:
    tracked = _run("git", "ls-files", ".env", "deploy").stdout.split()
    assert ".env" not in tracked
    assert not [p for p in tracked if p.endswith((".pem", ".key"))]
    example = env_file(ENV_EXAMPLE)
    assert set(SECRETS) <= set(example)
    secret_docs = [d for d in yaml.safe_load_all((K8S / "secret.template.yaml").read_text()) if d]
    k8s_tokens = next(
        d["stringData"]["NODULEFLOW_API_TOKENS"]
        for d in secret_docs
        if "stringData" in d and "NODULEFLOW_API_TOKENS" in d["stringData"]
    )
    systemd_tokens = env_file(SYSTEMD / "noduleflow.env.example")["NODULEFLOW_API_TOKENS"]
    for tokens in (example["NODULEFLOW_API_TOKENS"], k8s_tokens, systemd_tokens):
        with pytest.raises(ValidationError):
            Settings(api_tokens=tokens)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- kubernetes


def test_kubernetes_manifests_validate_strictly() -> None:
    result = _run(_tool("kubernetes-validate"), "--strict", "--quiet", *map(str, _k8s_files()))
    assert result.returncode == 0, result.stdout + result.stderr
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.template.yaml" not in kustomization["resources"]


def test_kubernetes_pods_are_hardened_and_sized() -> None:
    docs = _k8s_docs()
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(workloads) == 4
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    worker = by_kind[("Deployment", "noduleflow-worker")]["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    reporter = by_kind[("Deployment", "noduleflow-reporter")]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert reporter["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert reporter["livenessProbe"]["httpGet"]["path"] == "/healthz"
    receiver = by_kind[("Deployment", "noduleflow-receiver")]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert receiver["readinessProbe"]["tcpSocket"]["port"] == "dicom"
    pvc = by_kind[("PersistentVolumeClaim", "noduleflow-storage")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert by_kind[("Service", "noduleflow-dicom")]["spec"]["type"] in ("LoadBalancer", "NodePort")
    assert {d["kind"] for d in docs} >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Ingress",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }


# -------------------------------------------------------------------- settings names (all)


def _files_naming_settings() -> list[Path]:
    files = [COMPOSE, ENV_EXAMPLE, *DOCS.glob("**/*.md")]
    files += [p for p in DEPLOY.rglob("*") if p.is_file()]
    return files


def test_every_noduleflow_variable_is_a_settings_field() -> None:
    fields = set(Settings.model_fields)
    unknown: dict[str, set[str]] = {}
    seen = 0
    for path in _files_naming_settings():
        for name in SETTINGS_ENV.findall(path.read_text()):
            seen += 1
            if name.removeprefix("NODULEFLOW_").lower() not in fields:
                unknown.setdefault(str(path.relative_to(ROOT)), set()).add(name)
    assert seen > 50
    assert unknown == {}


# ------------------------------------------------------------------------------ dockerfiles


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_builds_a_non_root_runtime_image(name: str) -> None:
    path = DEPLOY / name
    steps = dockerfile_instructions(path)
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    args = " ".join(a for w, a in steps if w == "ARG")
    assert ("python:3.11-slim" in args) if name == "Dockerfile" else ("nvidia/cuda:" in args)
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    users = [a for w, a in runtime if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(w == "HEALTHCHECK" for w, _ in runtime)
    entry = next(a for w, a in runtime if w == "ENTRYPOINT")
    assert '"noduleflow"' in entry
    text = path.read_text()
    assert "torch" not in text.replace("(torch stays out", "")
    if name == "Dockerfile.gpu":
        assert '".[gpu]"' in text and "pip uninstall -y onnxruntime" in text
    patterns = dockerignore_patterns()
    for word, rest in steps:
        if word != "COPY" or "--from=" in rest:
            continue
        for source in [a for a in rest.split() if not a.startswith("--")][:-1]:
            assert (ROOT / source).exists(), f"{name}: COPY {source} is missing"
            assert not ignored_by_docker(source, patterns), f"{name}: {source} is in .dockerignore"


def test_dockerfiles_pass_hadolint() -> None:
    result = _run(_tool("hadolint"), str(DEPLOY / "Dockerfile"), str(DEPLOY / "Dockerfile.gpu"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".env",
        ".git",
        ".venv",
        "var/storage/x.dcm",
        "deploy/k8s/secret.template.yaml",
        "a/b/__pycache__/m.pyc",
    ):
        assert ignored_by_docker(path, patterns), path
    for path in (
        "services/cli.py",
        "pyproject.toml",
        "README.md",
        "models/nodule-seg/model.onnx",
        "deploy/healthcheck.py",
    ):
        assert not ignored_by_docker(path, patterns), path


# ---------------------------------------------------------------------------------- systemd


def test_systemd_units_verify(tmp_path: Path) -> None:
    exe = require_tool("systemd-analyze")
    noduleflow = VENV_BIN / "noduleflow"
    assert noduleflow.exists()
    env = tmp_path / "noduleflow.env"
    env.write_text("")
    units = sorted(SYSTEMD.glob("noduleflow*.service")) + sorted(SYSTEMD.glob("*.target"))
    names = {u.name for u in units}
    assert {f"noduleflow-{r}.service" for r in ("receiver", "worker", "reporter")} <= names
    for unit in units:
        text = unit.read_text()
        if unit.suffix == ".service":
            assert "User=noduleflow" in text and "NoNewPrivileges=yes" in text
        text = text.replace("/opt/noduleflow/venv/bin/noduleflow", str(noduleflow))
        (tmp_path / unit.name).write_text(text.replace("/etc/noduleflow/noduleflow.env", str(env)))
    result = _run(
        exe, "verify", "--man=no", *(str(tmp_path / n) for n in sorted(names)), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_operations_guide_documents_every_setting() -> None:
    guide = (DOCS / "operations.md").read_text()
    missing = [f for f in Settings.model_fields if f"NODULEFLOW_{f.upper()}" not in guide]
    assert missing == [], f"add these settings to docs/operations.md, section 2: {missing}"


def test_docs_links_resolve() -> None:
    for doc in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_compose_orthanc_and_noduleflow_agree() -> None:
    """Names and ports that must match across orthanc.json, the Lua script and compose."""
    services = _compose()["services"]
    config = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["orthanc"]["volumes"]}
    assert mounts["/etc/orthanc/orthanc.json"] == "./deploy/orthanc/orthanc.json"
    for script in config["LuaScripts"]:
        assert Path(mounts[script]).name == Path(script).name
        assert (ROOT / mounts[script]).is_file()
    assert mounts[config["StorageDirectory"]] == "orthanc-data"
    target = config["DicomModalities"]["noduleflow"]
    receiver = services["receiver"]["environment"]
    assert target["Host"] == "receiver"
    assert str(target["Port"]) == receiver["NODULEFLOW_DICOM_PORT"]
    assert target["AET"] == receiver["NODULEFLOW_AE_TITLE"]
    assert config["DicomAet"] in receiver["NODULEFLOW_ALLOWED_AETS"]
    pacs = services["reporter"]["environment"]["NODULEFLOW_PACS"]
    assert pacs == f"{config['DicomAet']}@orthanc:{config['DicomPort']}"
    assert services["reporter"]["environment"]["NODULEFLOW_AE_TITLE"] == target["AET"]
    lua = (ORTHANC_DIR / "autoroute.lua").read_text()
    assert "local TARGET = 'noduleflow'" in lua and f"local OUR_AET = '{target['AET']}'" in lua
