"""``kubectl kustomize deploy/k8s``, as a cluster would get it: every object validated
strictly (Kubernetes kinds by kubernetes-validate, KEDA's by the project's schema of its
CRDs), and the scaling layout: two receivers rolling behind one Service with one always
up, GPU workers scaled by KEDA on the inference queue up to a maximum, the reporter by an
HPA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.core.messages import INFERENCE_QUEUE
from tests.integration.deploy.repo import K8S
from tests.services import require_tool

pytestmark = pytest.mark.integration

KEDA_SCHEMA = Path(__file__).with_name("schemas") / "keda-v1alpha1.json"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    exe = require_tool("kubectl")
    result = subprocess.run(
        [exe, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("kustomize") / "noduleflow.yaml"
    path.write_text(result.stdout)
    return path, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kustomize_output_validates_strictly(built: tuple[Path, list[dict[str, Any]]]) -> None:
    path, docs = built
    exe = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(exe) if exe.exists() else require_tool("kubernetes-validate"), "--strict", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = result.stdout.count(" passed for resource ")
    warned = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    # every object but KEDA's was checked against the Kubernetes schema ...
    assert passed == len([d for d in docs if d["kind"] not in KEDA_KINDS]), result.stdout
    assert all(any(kind in line for kind in KEDA_KINDS) for line in warned), warned
    # ... and KEDA's against the schema of their CRDs, strictly
    schema = json.loads(KEDA_SCHEMA.read_text())
    keda = [d for d in docs if d["kind"] in KEDA_KINDS]
    assert {d["kind"] for d in keda} == KEDA_KINDS
    for doc in keda:
        jsonschema.validate(doc, {**schema, "$ref": f"#/$defs/{doc['kind']}"})


def test_the_keda_schema_refuses_unknown_fields(built: tuple[Path, list[dict[str, Any]]]) -> None:
    schema = {**json.loads(KEDA_SCHEMA.read_text()), "$ref": "#/$defs/ScaledObject"}
    scaled = _one(built[1], "ScaledObject", "noduleflow-worker")
    typo = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 4}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)


def test_receivers_roll_behind_one_service_with_one_always_up(
    built: tuple[Path, list[dict[str, Any]]],
) -> None:
    docs = built[1]
    receiver = _one(docs, "Deployment", "noduleflow-receiver")
    spec = receiver["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = spec["template"]["metadata"]["labels"]
    services = [
        d for d in docs if d["kind"] == "Service" and _selects(d["spec"]["selector"], labels)
    ]
    assert [s["metadata"]["name"] for s in services] == ["noduleflow-dicom"]
    budgets = [
        d
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
        and _selects(d["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(budgets) == 1 and budgets[0]["spec"]["minAvailable"] == 1


def test_workers_scale_on_the_inference_queue_up_to_a_maximum(
    built: tuple[Path, list[dict[str, Any]]],
) -> None:
    docs = built[1]
    worker = _one(docs, "Deployment", "noduleflow-worker")
    assert "replicas" not in worker["spec"]  # the autoscaler's, never reset by an apply
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    scaled = _one(docs, "ScaledObject", "noduleflow-worker")["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "noduleflow-worker",
    }
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"] <= 16
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == INFERENCE_QUEUE
    assert trigger["metadata"]["mode"] == "QueueLength" and int(trigger["metadata"]["value"]) >= 1
    auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    (ref,) = auth["secretTargetRef"]
    assert (ref["parameter"], ref["name"], ref["key"]) == (
        "host",
        "noduleflow-backend",
        "NODULEFLOW_BROKER_URL",
    )
    assert {"ScaledObject", "TriggerAuthentication"} <= {
        d["kind"] for d in docs if d["metadata"].get("namespace") == "noduleflow"
    }


def test_reporter_has_an_hpa(built: tuple[Path, list[dict[str, Any]]]) -> None:
    docs = built[1]
    reporter = _one(docs, "Deployment", "noduleflow-reporter")
    assert "replicas" not in reporter["spec"]
    hpa = _one(docs, "HorizontalPodAutoscaler", "noduleflow-reporter")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "noduleflow-reporter"
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    container = reporter["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"]  # utilisation needs a request
