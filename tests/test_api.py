"""The HTTP contract against a real `prm serve` process on loopback."""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.api.routes import INLINE_ENCODE_BYTES

TOLERANCE = 1e-5


def post(server, path: str, body) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def test_score_steps_single_matches_the_model_card(server, reference, processbench_items):
    item = processbench_items[4]
    response = post(server, "/score_steps", {"problem": item["problem"], "steps": item["steps"]})
    assert response.status_code == 200
    body = response.json()
    assert body["step_scores"] == pytest.approx(reference.step_rewards(item["problem"], item["steps"]), abs=TOLERANCE)
    assert body["model"] == "tiny-prm"
    assert len(body["model_version"]) == 12
    assert body["usage"]["tokens"] == reference.conversation(item["problem"], item["steps"]).shape[1]


def test_score_steps_batch_keeps_order(server, reference, processbench_items):
    items = [{"problem": item["problem"], "steps": item["steps"]} for item in processbench_items]
    response = post(server, "/score_steps", {"items": items})
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == len(items)
    for item, result in zip(items, body["results"], strict=True):
        assert result["step_scores"] == pytest.approx(reference.step_rewards(**item), abs=TOLERANCE)
    tokens = sum(reference.conversation(**item).shape[1] for item in items)
    assert body["usage"]["tokens"] == tokens


def test_large_bodies_are_tokenized_off_the_event_loop_with_the_same_scores_and_errors(server, processbench_items):
    """Small bodies are tokenized on the event loop, large ones in a worker thread: the same answers either way."""
    items = [{"problem": item["problem"], "steps": item["steps"]} for item in processbench_items] * 4
    large = {"items": items}
    assert len(json.dumps(large)) > INLINE_ENCODE_BYTES > max(len(json.dumps(item)) for item in items)
    response = post(server, "/score_steps", large)
    assert response.status_code == 200
    alone = [post(server, "/score_steps", item).json()["step_scores"] for item in items[: len(processbench_items)]]
    for result, expected in zip(response.json()["results"], alone * 4, strict=True):
        assert result["step_scores"] == pytest.approx(expected, abs=TOLERANCE)
    bad = post(server, "/score_steps", {"items": [*items[:-1], {"problem": "2+2?", "steps": ["a", " "]}]})
    assert bad.status_code == 422
    assert f"items[{len(items) - 1}].steps[1]" in bad.json()["error"]


def test_concurrent_requests_all_get_their_own_scores(server, reference, processbench_items):
    def score(item):
        return post(server, "/score_steps", {"problem": item["problem"], "steps": item["steps"]})

    work = processbench_items * 4
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(score, work))
    for item, response in zip(work, responses, strict=True):
        assert response.status_code == 200
        expected = reference.step_rewards(item["problem"], item["steps"])
        assert response.json()["step_scores"] == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize(
    ("aggregation", "combine"),
    [
        ("product", math.prod),
        ("min", min),
        ("last", lambda s: s[-1]),
        ("mean", lambda s: sum(s) / len(s)),
        ("max", max),
    ],
)
def test_rerank_orders_by_aggregated_step_scores(server, reference, processbench_items, aggregation, combine):
    problem = processbench_items[0]["problem"]
    candidates = [item["steps"] for item in processbench_items[:6]]
    body = {
        "problem": problem,
        "candidates": [{"steps": steps} for steps in candidates],
        "aggregation": aggregation,
        "return_step_scores": True,
    }
    response = post(server, "/rerank", body)
    assert response.status_code == 200
    results = response.json()["results"]
    expected = [combine(reference.step_rewards(problem, steps)) for steps in candidates]
    order = sorted(range(len(candidates)), key=lambda i: -expected[i])
    assert [r["index"] for r in results] == order
    for result in results:
        assert result["score"] == pytest.approx(expected[result["index"]], abs=TOLERANCE)
        assert len(result["step_scores"]) == len(candidates[result["index"]])


def test_rerank_text_candidates_top_n_and_ties(server, reference):
    problem = "What is 2+3*4?"
    text = "3*4 = 12\n\n 2+12 = 14 \n\n\n\nThe answer is 14."
    response = post(
        server, "/rerank", {"problem": problem, "candidates": [text, {"steps": ["2+3 = 5", "5*4 = 20"]}, text]}
    )
    assert response.status_code == 200
    results = response.json()["results"]
    expected = math.prod(reference.step_rewards(problem, ["3*4 = 12", "2+12 = 14", "The answer is 14."]))
    by_index = {r["index"]: r["score"] for r in results}
    assert by_index[0] == pytest.approx(expected, abs=TOLERANCE)
    assert by_index[2] == pytest.approx(expected, abs=TOLERANCE)
    assert all("step_scores" not in r for r in results)

    top = post(server, "/rerank", {"problem": problem, "candidates": [text, "5*4 = 20", text], "top_n": 1}).json()
    assert len(top["results"]) == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/score_steps", {"problem": "p", "steps": []}, 422, "steps"),
        ("/score_steps", {"problem": " \n", "steps": ["a"]}, 422, "problem"),
        ("/score_steps", {"problem": "p", "steps": ["a", "b<extra_0>"]}, 422, "steps[1]"),
        (
            "/score_steps",
            {"items": [{"problem": "p", "steps": ["a"]}, {"problem": "p", "steps": []}]},
            422,
            "items[1].steps",
        ),
        ("/score_steps", {"problem": "p", "steps": [3]}, 422, "steps[0]"),
        ("/score_steps", {"problem": "p"}, 422, "`problem` and `steps` are required"),
        ("/score_steps", {"problem": "p", "steps": ["a"], "items": []}, 422, "items"),
        ("/score_steps", {"problem": "p", "steps": ["a"], "stpes": []}, 422, "stpes"),
        ("/score_steps", {"problem": "p", "steps": ["1 + " * 3000]}, 413, "4096"),
        ("/rerank", {"problem": "p", "candidates": ["a"], "aggregation": "median"}, 422, "aggregation"),
        ("/rerank", {"problem": "p", "candidates": []}, 422, "candidates"),
        ("/rerank", {"problem": "p", "candidates": ["a", "\n\n"]}, 422, "candidates[1]"),
        ("/rerank", {"problem": "", "candidates": ["a"]}, 422, "problem"),
        ("/rerank", {"problem": "p", "candidates": ["a"], "top_n": 0}, 422, "top_n"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(server, path, body, status, field):
    response = post(server, path, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "type", "request_id"}
    assert field in error["error"]


def test_malformed_json_and_unknown_routes(server):
    response = httpx.post(
        f"{server.url}/score_steps", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "invalid_request"
    missing = httpx.get(f"{server.url}/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not Found", "type": "not_found", "request_id": missing.headers["X-Request-ID"]}


def test_health_ready_models_docs(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready")
    assert ready.status_code == 200 and ready.json()["model"] == "tiny-prm"
    card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert card["id"] == "tiny-prm"
    assert card["family"] == "qwen2-prm"
    assert (card["dtype"], card["device"], card["max_length"]) == ("float32", "cpu", 4096)
    assert card["version"] == ready.json()["model_version"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    assert "/rerank" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_metrics_count_what_happened(server, processbench_items):
    item = processbench_items[0]
    before = metric_values(server)
    post(server, "/score_steps", {"problem": item["problem"], "steps": item["steps"]})
    post(server, "/score_steps", {"problem": "p", "steps": []})
    after = metric_values(server)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)

    assert delta('prm_requests_total{endpoint="/score_steps",outcome="success"}') == 1
    assert delta('prm_requests_total{endpoint="/score_steps",outcome="invalid_request"}') == 1
    assert delta('prm_request_failures_total{reason="invalid_request"}') == 1
    assert delta("prm_steps_scored_total") == len(item["steps"])
    assert delta("prm_tokens_scored_total") > 0
    assert delta('prm_request_duration_seconds_count{endpoint="/score_steps"}') == 2
    for name in (
        "prm_queue_duration_seconds_count",
        "prm_inference_duration_seconds_count",
        "prm_batch_size_sequences_count",
        "prm_batch_size_tokens_count",
    ):
        assert delta(name) == 1
    assert after["prm_queue_sequences"] == 0
    assert any(name.startswith('prm_model_info{device="cpu",dtype="float32",name="tiny-prm"') for name in after)


def metric_values(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_not_ready_until_a_model_is_loaded(tmp_path):
    """/health answers at once; /ready and the scoring routes give 503 with Retry-After and the reason."""
    import time

    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.config import ServeConfig

    app = create_app(ServeConfig(model=str(tmp_path)))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        deadline = time.monotonic() + 30
        while app.state.runtime.fatal_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "1"
        assert "no config.json" in ready.json()["error"]
        scored = client.post("/score_steps", json={"problem": "p", "steps": ["a"]})
        assert scored.status_code == 503 and scored.json()["type"] == "not_ready"


def test_rerank_candidates_share_the_problem_prefix(server, reference, processbench_items):
    problem = processbench_items[7]["problem"]  # long enough to be worth sharing
    candidates = [item["steps"] for item in processbench_items[:4]]
    before = metric_values(server).get("prm_prefix_tokens_reused_total", 0)
    response = post(server, "/rerank", {"problem": problem, "candidates": [{"steps": s} for s in candidates]})
    reused = metric_values(server)["prm_prefix_tokens_reused_total"] - before
    assert reused >= 3 * 64  # three of the four candidates reuse the first one's prefix
    for result in response.json()["results"]:
        expected = math.prod(reference.step_rewards(problem, candidates[result["index"]]))
        assert result["score"] == pytest.approx(expected, abs=TOLERANCE)
