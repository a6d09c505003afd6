"""The Kubernetes manifests (deploy/k8s, a Kustomize base): every resource valid against the Kubernetes API schema
(kubernetes-validate ships the schemas, so this runs offline), and consistent with the appliance: the programs'
modules exist, probes ask the health endpoints on the ports config.py serves, every 3D worker asks for one GPU,
every setting in the ConfigMap is a setting, and the volumes the programs need are claimed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

import config
from tests.ops.conftest import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")

BASE = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes release still in common support; the manifests use nothing newer
HF_VARS = {"HF_HOME", "TORCH_HOME"}  # read by huggingface_hub and torch.hub, not by config.py


def resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in resources() if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def test_every_resource_is_valid_for_the_kubernetes_api() -> None:
    docs = resources()
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_programs_run_from_our_image_with_modules_that_exist() -> None:
    deployments = by_kind("Deployment")
    assert {"llm", "trellis", "trellis-worker", "studio", "redis"} <= set(deployments)
    for name in ("llm", "trellis", "trellis-worker", "studio"):
        c = container(deployments[name])
        assert c["image"] == "chat-to-3d", name
        command = c["command"]
        if command[1] == "-m":
            assert importlib.util.find_spec(command[2]) is not None, (name, command)
        else:
            assert (ROOT / command[1]).is_file(), (name, command)


def test_http_programs_are_probed_on_their_health_endpoints() -> None:
    fields = config.Settings.model_fields
    ports = {
        "llm": fields["llm_port"].default,
        "trellis": fields["trellis_port"].default,
        "studio": fields["gradio_server_port"].default,
    }
    deployments, services = by_kind("Deployment"), by_kind("Service")
    for name, port in ports.items():
        c = container(deployments[name])
        assert c["ports"][0]["containerPort"] == port and services[name]["spec"]["ports"][0]["targetPort"] == port
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["port"] == port, (name, probe)
        if name != "studio":
            assert c["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready", name
            assert c["livenessProbe"]["httpGet"]["path"] == "/v1/health/live", name


def test_each_3d_worker_takes_one_gpu_and_shares_the_queue() -> None:
    worker = container(by_kind("Deployment")["trellis-worker"])
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    settings = by_kind("ConfigMap")["chat3d-settings"]["data"]
    assert settings["JOB_QUEUE_URL"].startswith("redis://redis:")
    assert "redis" in by_kind("Service")


def test_settings_are_real_settings_and_the_volumes_are_claimed() -> None:
    settings = by_kind("ConfigMap")["chat3d-settings"]["data"]
    known = {name.upper() for name in config.Settings.model_fields} | {"CHAT3D_PROFILE"} | HF_VARS
    assert set(settings) <= known, set(settings) - known
    claims = set(by_kind("PersistentVolumeClaim"))
    for name, deployment in by_kind("Deployment").items():
        volumes = deployment["spec"]["template"]["spec"].get("volumes", [])
        used = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
        assert used <= claims, (name, used - claims)
        mounts = {m["mountPath"] for m in container(deployment).get("volumeMounts", [])}
        if name != "redis":
            assert {settings["DATA_DIR"], str(Path(settings["HF_HOME"]).parent)} <= mounts, name
