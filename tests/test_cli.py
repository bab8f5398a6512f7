"""`prm` as a user runs it: real subprocesses."""

import httpx

from tests.helpers import Server, run_prm


def test_serve_without_a_model_or_a_store_default_says_how_to_pass_one(tmp_path):
    result = run_prm("serve", "--store", str(tmp_path))
    assert result.returncode == 2
    assert "pass --model" in result.stderr and "PRM_MODEL" in result.stderr and str(tmp_path) in result.stderr
    assert result.stderr.count("\n") == 1  # one sentence, no traceback


def test_serve_with_an_unloadable_model_exits_non_zero(tmp_path):
    result = run_prm("serve", "--model", str(tmp_path), "--port", "0")
    assert result.returncode == 1
    assert f"could not load '{tmp_path}'" in result.stderr and "no config.json" in result.stderr


def test_nonsense_thread_and_worker_counts_are_refused_naming_the_option():
    for option, value in (("--engine-workers", "0"), ("--threads", "0"), ("--engine-workers", "two")):
        result = run_prm("serve", option, value)
        assert result.returncode == 2
        assert f"Invalid value for '{option}'" in result.stderr


def test_help_explains_every_option():
    result = run_prm("serve", "--help", env={"COLUMNS": "240"})
    assert result.returncode == 0
    options = ["--model", "--host", "--port", "--device", "--dtype", "--max-batch-tokens", "--max-wait-ms"]
    options += ["--max-queue-tokens", "--request-timeout", "--api-key", "--admin-key", "--drain-timeout"]
    options += ["--threads", "--engine-workers"]
    for option in options:
        assert option in result.stdout


def test_options_come_from_prm_environment_variables(checkpoint):
    server = Server(env={"PRM_MODEL": str(checkpoint), "PRM_DTYPE": "bfloat16", "PRM_MAX_ITEMS_PER_REQUEST": "2"})
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["dtype"] == "bfloat16"
        items = [{"problem": "p", "steps": ["a"]}] * 3
        response = httpx.post(f"{server.url}/score_steps", json={"items": items})
        assert response.status_code == 413 and "at most 2" in response.json()["error"]
    finally:
        server.stop()
