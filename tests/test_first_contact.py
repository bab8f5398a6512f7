"""What a new user and an operator meet in their first hour: hostile requests on a keep-alive connection,
readable errors, request ids and the access log, process metrics, offline docs, the command line."""

import json
import time

import httpx
import pytest

from service.api.app import create_app
from service.config import ServeConfig
from tests.helpers import Server, run_prm, serve_in_thread

TOLERANCE = 1e-5


def keep_alive_client(url: str, ports: list[int]) -> httpx.Client:
    """One pooled connection; `ports` gets the local port that carried each response: equal ports, same connection."""

    def record(response: httpx.Response) -> None:
        ports.append(response.extensions["network_stream"].get_extra_info("client_addr")[1])

    hooks = {"response": [record]}
    return httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1), event_hooks=hooks)


def post_raw(client: httpx.Client, path: str, raw: str, **headers) -> httpx.Response:
    return client.post(path, content=raw.encode(), headers={"content-type": "application/json", **headers})


def test_a_lone_surrogate_is_a_422_and_the_connection_stays_usable(server, reference, processbench_items):
    item = processbench_items[0]
    ports = []
    with keep_alive_client(server.url, ports) as client:
        bad = post_raw(client, "/score_steps", '{"problem": "\\ud800", "steps": ["a"]}')
        good = client.post("/score_steps", json={"problem": item["problem"], "steps": item["steps"]})
        step = post_raw(client, "/rerank", '{"problem": "p", "candidates": [["a", "b\\udfff"]]}')
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"].startswith("problem: has a lone surrogate (U+D800)")
    assert step.status_code == 422 and step.json()["error"].startswith("candidates[0].steps[1]: has a lone surrogate")
    assert good.status_code == 200
    assert good.json()["step_scores"] == pytest.approx(reference.step_rewards(item["problem"], item["steps"]), abs=1e-5)
    assert len(ports) == 3 and len(set(ports)) == 1


@pytest.fixture(scope="module")
def with_a_bug(checkpoint):
    """The real app with one extra route that fails as a bug would, served on loopback in this process."""
    app = create_app(ServeConfig(model=str(checkpoint)))

    @app.get("/bug")
    async def bug():
        raise RuntimeError("injected")

    with serve_in_thread(app) as url:
        deadline = time.monotonic() + 60
        while not app.state.runtime.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        yield url


def test_a_500_answers_json_and_leaves_the_keep_alive_connection_usable(with_a_bug):
    ports = []
    with keep_alive_client(with_a_bug, ports) as client:
        failed = client.get("/bug", headers={"X-Request-ID": "trace-500"})
        after = client.post("/score_steps", json={"problem": "What is 1+1?", "steps": ["1+1 = 2"]})
        invalid = client.post("/score_steps", json={"problem": "p", "steps": []})
        again = client.get("/health")
        metrics = client.get("/metrics").text
    assert failed.status_code == 500
    expected = {"error": "internal error: RuntimeError", "type": "internal_error", "request_id": "trace-500"}
    assert failed.json() == expected
    assert after.status_code == 200 and invalid.status_code == 422 and again.status_code == 200
    assert len(ports) == 5 and len(set(ports)) == 1
    assert 'prm_requests_total{endpoint="/bug",outcome="internal_error"} 1.0' in metrics
    assert 'prm_request_failures_total{reason="internal_error"} 1.0' in metrics


def test_rerank_takes_plain_step_lists_beside_objects_and_text(server, reference, processbench_items):
    problem = processbench_items[0]["problem"]
    steps = [processbench_items[i]["steps"] for i in range(3)]
    body = {
        "problem": problem,
        "candidates": [steps[0], {"steps": steps[1]}, "\n\n".join(steps[2])],
        "aggregation": "min",
        "return_step_scores": True,
    }
    response = httpx.post(f"{server.url}/rerank", json=body, timeout=30)
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        expected = reference.step_rewards(problem, steps[result["index"]])
        assert result["step_scores"] == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (7, 'candidates[0]: must be a list of steps, {"steps": [...]} or raw text'),
        (["a", 1], "candidates[0].steps[1]: Input should be a valid string"),
        ({"steps": ["a"], "weight": 1}, "candidates[0].weight: Extra inputs are not permitted"),
        ("\n\n \n\n", "candidates[0]: has no text between blank lines to score"),
    ],
)
def test_a_bad_candidate_is_named_without_internal_class_names(server, candidate, message):
    response = httpx.post(f"{server.url}/rerank", json={"problem": "p", "candidates": [candidate]}, timeout=30)
    assert (response.status_code, response.json()["error"]) == (422, message)


@pytest.mark.parametrize("empty", ["", "  ", "\n\t"])
def test_an_empty_or_whitespace_step_is_refused_by_both_endpoints(server, empty):
    scored = httpx.post(f"{server.url}/score_steps", json={"problem": "p", "steps": ["a", empty]}, timeout=30)
    ranked = httpx.post(f"{server.url}/rerank", json={"problem": "p", "candidates": [["a"], [empty]]}, timeout=30)
    assert (scored.status_code, scored.json()["error"]) == (422, "steps[1]: must not be empty or whitespace")
    expected = "candidates[1].steps[0]: must not be empty or whitespace"
    assert (ranked.status_code, ranked.json()["error"]) == (422, expected)


def test_errors_a_newcomer_can_read(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        malformed = post_raw(client, "/score_steps", '{"problem": "p", "steps": ["a"],,}')
        no_type = client.post("/score_steps", content=b'{"problem": "p", "steps": ["a"]}')
        wrong_type = client.post("/score_steps", content=b"problem=p", headers={"content-type": "text/plain"})
    assert malformed.status_code == 422
    assert malformed.json()["error"].startswith("body: invalid JSON at character 32")
    assert (no_type.status_code, no_type.json()["type"]) == (415, "unsupported_media_type")
    assert "no content-type header" in no_type.json()["error"]
    assert wrong_type.status_code == 415 and "'text/plain'" in wrong_type.json()["error"]


@pytest.mark.parametrize("part", ["problem", "system", "steps"])
def test_input_too_long_names_the_part_that_made_it_long(server, part):
    body = {"problem": "p", "steps": ["a"], "system": "s"}
    long = " ".join(["word"] * 6000)  # the test checkpoint's maximum is 4096 tokens
    body[part] = [long] if part == "steps" else long
    response = httpx.post(f"{server.url}/score_steps", json=body, timeout=30)
    assert response.status_code == 413 and response.json()["type"] == "input_too_long"
    assert response.json()["error"].startswith(f"{part}: the formatted conversation is ")


def test_request_ids_are_echoed_or_made_and_the_access_log_is_json_lines(checkpoint):
    server = Server("--model", str(checkpoint), "--log-format", "json").wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            given = client.post(
                "/score_steps", json={"problem": "p", "steps": ["a", "b"]}, headers={"X-Request-ID": "rl-step-7"}
            )
            made = client.post("/score_steps", json={"problem": "p", "steps": []})
            forged = client.get("/health", headers={"X-Request-ID": "x\ty"})
    finally:
        server.stop()
    assert given.headers["X-Request-ID"] == "rl-step-7"
    made_id = made.headers["X-Request-ID"]
    assert len(made_id) == 32 and made.json()["request_id"] == made_id
    assert forged.headers["X-Request-ID"] != "x\ty"  # not plain: replaced, never echoed into logs
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    access = {line["request_id"]: line for line in lines if line["logger"] == "prm.access"}
    assert access["rl-step-7"]["tokens"] == given.json()["usage"]["tokens"]
    assert {k: access["rl-step-7"][k] for k in ("method", "route", "status")} == {
        "method": "POST",
        "route": "/score_steps",
        "status": 200,
    }
    assert access[made_id]["status"] == 422 and access[made_id]["ms"] >= 0
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # the server's own lines, in one format


def test_metrics_carry_the_standard_process_series(server):
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "python_info"):
        assert f"\n{name}" in text


def test_docs_load_their_assets_from_this_server(server):
    page = httpx.get(f"{server.url}/docs").text
    assets = [part.split('"')[0] for part in page.split('="')[1:] if part.startswith("/static")]
    assert len(assets) >= 2 and "cdn" not in page.lower() and "https://" not in page
    for asset in assets:
        response = httpx.get(f"{server.url}{asset}")
        assert response.status_code == 200 and len(response.content) > 1000


def test_version():
    from service import __version__

    result = run_prm("--version")
    assert (result.returncode, result.stdout) == (0, f"prm-service {__version__}\n")


@pytest.mark.parametrize("command", [["serve"], ["eval", "processbench"], ["eval", "bon"], ["train"]])
def test_help_fits_80_columns_with_every_flag_and_variable_whole(command):
    result = run_prm(*command, "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "…" not in result.stdout
    if command == ["serve"]:
        for flag in ("--max-concurrent-requests", "--max-items-per-request", "--min-shared-prefix", "--log-format"):
            assert flag in result.stdout
        assert "PRM_MAX_CONCURRENT_REQUESTS" in result.stdout and "PRM_MAX_ITEMS_PER_REQUEST" in result.stdout
    if command != ["train"]:
        assert "--dtype [auto|float32|bfloat16|float16]" in result.stdout.replace("<", "[").replace(">", "]")


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["eval", "processbench", "--data", "x.json", "--out", "o"],
        ["eval", "bon", "--data", "x", "--out", "o"],
    ],
)
def test_every_command_refuses_an_unknown_dtype_in_one_line(command):
    result = run_prm(*command, "--dtype", "fp8")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "'fp8' is not one of 'auto', 'float32', 'bfloat16', 'float16'" in errors[0]


def test_a_typo_in_model_lists_the_stores_models():
    result = run_prm("serve", "--model", "demo-arth")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "models: demo-arith" in result.stderr and "did you mean 'demo-arith'?" in result.stderr


def test_a_store_that_does_not_exist_says_so(tmp_path):
    result = run_prm("serve", "--store", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"the store {tmp_path / 'nowhere'} does not exist" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "processbench", "--model", "demo-arith", "--out", "r.json", "--data"],
        ["eval", "bon", "--model", "demo-arith", "--out", "r.json", "--data"],
        ["train", "--base", "scratch", "--out", "trained", "--data"],
    ],
)
def test_a_missing_data_file_is_one_line(tmp_path, command):
    missing = str(tmp_path / "data" / "nope.jsonl")
    result = run_prm(*command, missing)
    assert (result.returncode, result.stderr) == (2, f"error: {missing}: no such file\n")


@pytest.mark.parametrize("command", [["serve"], ["train", "--base", "scratch", "--data", "x.jsonl", "--out", "o"]])
def test_a_bad_log_level_is_refused_in_one_line(command):
    result = run_prm(*command, env={"PRM_LOG_LEVEL": "loud"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 2 and len(errors) == 1
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error'" in errors[0]
