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
    docs = {
        doc["kind"]: doc for file in ("prm-service.yaml", "hpa.yaml") for doc in load_all(ROOT / "deploy/k8s" / file)
    }
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
        "prm_prefix_cache_hit_tokens_total",  # the hit rate, with
        "prm_prefix_cache_miss_tokens_total",
        "prm_prefix_cache_bytes",
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


def by_name(path: Path) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in load_all(path)}


def test_the_72b_manifest_puts_vllm_tensor_parallelism_behind_the_cpu_front():
    docs = by_name(ROOT / "deploy/k8s/prm-72b-vllm.yaml")
    (vllm,) = docs["Deployment", "vllm-prm-72b"]["spec"]["template"]["spec"]["containers"]
    tensor_parallel = int(vllm["args"][vllm["args"].index("--tensor-parallel-size") + 1])
    assert tensor_parallel == vllm["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert vllm["args"][vllm["args"].index("--runner") + 1] == "pooling"
    upstream = docs["Service", "vllm-prm-72b"]["spec"]
    assert upstream["selector"] == docs["Deployment", "vllm-prm-72b"]["spec"]["selector"]["matchLabels"]
    (front,) = docs["Deployment", "prm-72b"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in front["env"]}
    assert env["PRM_VLLM_URL"] == f"http://vllm-prm-72b:{upstream['ports'][0]['port']}"
    assert env["PRM_MODEL"] == vllm["args"][vllm["args"].index("--model") + 1]
    assert front["image"] == "prm-service:cpu" and "nvidia.com/gpu" not in str(front.get("resources"))
    assert front["readinessProbe"]["httpGet"]["path"] == "/ready"  # 503 while vLLM is unreachable
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["prm-72b"]["environment"]["PRM_VLLM_URL"] == "http://vllm-prm:8000"
    assert services["prm-72b"]["image"] == "prm-service:cpu" and "deploy" not in services["prm-72b"]


def test_the_annotation_job_gives_each_index_its_own_shard():
    from service.jobs.data.resumable import Shard

    job = by_name(ROOT / "deploy/k8s/annotate-job.yaml")["Job", "prm-annotate-mc"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] == 8
    (container,) = job["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["SHARDS"]) == job["completions"]
    command = container["args"][0]
    assert '--shard "$JOB_COMPLETION_INDEX/$SHARDS"' in command and '"/data/mc-$JOB_COMPLETION_INDEX.jsonl"' in command
    shards = [Shard.parse(f"{index}/{env['SHARDS']}") for index in range(job["completions"])]
    assert {shard.index for shard in shards} == set(range(8))
    result = subprocess.run([sys.executable, "-m", "service", *command.split()[1:3], "--help"], capture_output=True)
    assert result.returncode == 0  # `prm annotate mc` exists


def compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) or, failing that, the standalone `docker-compose`; neither needs an engine."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_command() is None, reason="needs docker compose or docker-compose (no engine needed)")
def test_docker_compose_config_validates():
    for profile in ([], ["--profile", "annotate"], ["--profile", "cpu"], ["--profile", "vllm-72b"]):
        result = subprocess.run(
            [*compose_command(), *profile, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
