"""Deployment artefacts: Locust profiles run headless against a real server; manifests agree with the service."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.config import ServeConfig

ROOT = Path(__file__).parent.parent


def test_locust_profiles_run_headless(server, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtest/locustfile.py"),
            "--headless",
            "-u",
            "6",
            "-r",
            "6",
            "-t",
            "4s",
            "-H",
            server.url,
            "--csv",
            str(tmp_path / "run"),
            "--rollouts",
            "4",
            "--candidates",
            "4",
            "--only-summary",
            "RL",
            "BestOfN",
            "Mixed",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "run_stats.csv").read_text().splitlines())}
    for name in ("rl", "bon", "single"):
        assert int(rows[name]["Request Count"]) > 0, name
        assert int(rows[name]["Failure Count"]) == 0, name


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_manifests_agree_with_the_service():
    docs = {doc["kind"]: doc for file in (ROOT / "deploy/k8s").glob("*.yaml") for doc in load_all(file)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PRM_PORT"] == str(port) and env["PRM_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    drain = float(env.get("PRM_DRAIN_TIMEOUT") or ServeConfig.drain_timeout)
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain  # SIGTERM drains before the kill
    assert any(m["mountPath"] == "/models" and m.get("readOnly") for m in container["volumeMounts"])
    service = docs["Service"]["spec"]
    assert service["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert any(p["targetPort"] == "http" for p in service["ports"])
    monitor = docs["ServiceMonitor"]["spec"]["endpoints"][0]
    assert monitor["path"] == "/metrics" and monitor["port"] == "http"
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "prm_queue_tokens"


def test_compose_and_monitoring_config():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prm", "prometheus", "grafana", "vllm"} <= set(services)
    assert services["vllm"]["profiles"] == ["annotate"]
    assert services["prm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["prm:8000"] and scrape["metrics_path"] == "/metrics"
    dashboard = (ROOT / "deploy/grafana/dashboards/prm-service.json").read_text()
    for metric in (
        "prm_requests_total",
        "prm_request_duration_seconds_bucket",
        "prm_queue_sequences",
        "prm_batch_size_tokens",
        "prm_tokens_scored_total",
        "prm_request_failures_total",
        "prm_model_info",
    ):
        assert metric in dashboard


def test_compose_and_kubernetes_name_the_images_the_build_script_builds():
    script = (ROOT / "deploy/build-image.sh").read_text()
    assert "image=prm-service:$variant" in script and "variant must be cpu or cuda" in script
    built = {"prm-service:cpu", "prm-service:cuda"}
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["prm"]["image"] == "prm-service:cuda" and services["prm-cpu"]["image"] == "prm-service:cpu"
    assert services["prm-cpu"]["profiles"] == ["cpu"] and "deploy" not in services["prm-cpu"]  # no GPU
    cpu_args = services["prm-cpu"]["build"]["args"]
    assert set(cpu_args) == {"BASE_IMAGE", "TORCH_INDEX_URL"}  # the CUDA variant differs in these two only
    (container,) = next(doc for doc in load_all(ROOT / "deploy/k8s/prm-service.yaml") if doc["kind"] == "Deployment")[
        "spec"
    ]["template"]["spec"]["containers"]
    assert container["image"] in built and container["image"].endswith(":cuda")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=nvidia/cuda" in dockerfile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu" in dockerfile


def compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) or, failing that, the standalone `docker-compose`; neither needs an engine."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_command() is None, reason="needs docker compose or docker-compose (no engine needed)")
def test_docker_compose_config_validates():
    for profile in ([], ["--profile", "annotate"], ["--profile", "cpu"]):
        result = subprocess.run(
            [*compose_command(), *profile, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
