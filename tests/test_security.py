"""Auth and input limits against a real `prm serve` process."""

import httpx
import pytest

from tests.helpers import Server

API, ADMIN = "api-key-1", "admin-key-1"


@pytest.fixture(scope="module")
def guarded(checkpoint):
    server = Server(
        "--model",
        str(checkpoint),
        "--max-steps-per-item",
        "8",
        "--max-step-chars",
        "200",
        "--max-problem-chars",
        "300",
        "--max-body-bytes",
        "20000",
        env={"PRM_API_KEYS": f"other-key, {API}", "PRM_ADMIN_KEYS": ADMIN},
    ).wait_ready()
    yield server
    server.stop()


def score(server, key: str | None, body: dict | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = body or {"problem": "What is 2+3?", "steps": ["2+3 = 5"]}
    return httpx.post(f"{server.url}/score_steps", json=body, headers=headers, timeout=30, **kwargs)


def test_auth_matrix(guarded):
    missing = score(guarded, None)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["type"] == "unauthorized"
    assert score(guarded, "wrong").status_code == 401
    assert score(guarded, API).status_code == 200
    assert score(guarded, "other-key").status_code == 200
    assert score(guarded, ADMIN).status_code == 200  # an admin key also scores

    def reload(key):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{guarded.url}/admin/reload", headers=headers, timeout=60)

    assert reload(None).status_code == 401
    assert reload("wrong").status_code == 401
    assert reload(API).status_code == 403
    assert reload(ADMIN).status_code == 200
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    assert httpx.get(f"{guarded.url}/v1/models", headers={"Authorization": f"Bearer {API}"}).status_code == 200
    for public in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{guarded.url}{public}").status_code == 200


def test_protected_metrics(checkpoint):
    server = Server("--model", str(checkpoint), "--protect-metrics", env={"PRM_API_KEYS": API}).wait_ready()
    try:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {API}"}).status_code == 200
        assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"problem": "p", "steps": ["a"] * 9}, 413, "steps"),
        ({"problem": "p", "steps": ["a", "b" * 201]}, 413, "steps[1]"),
        ({"problem": "p" * 301, "steps": ["a"]}, 413, "problem"),
        ({"items": [{"problem": "p", "steps": ["a"]}, {"problem": "p", "steps": ["a"] * 9}]}, 413, "items[1].steps"),
    ],
)
def test_size_limits_name_the_field(guarded, body, status, field):
    response = score(guarded, API, body)
    assert response.status_code == status
    assert response.json()["type"] == "too_large" and response.json()["error"].startswith(field + ":")


def test_rerank_size_limits(guarded):
    body = {"problem": "p", "candidates": ["a", {"steps": ["x" * 201]}]}
    response = httpx.post(f"{guarded.url}/rerank", json=body, headers={"Authorization": f"Bearer {API}"})
    assert response.status_code == 413 and response.json()["error"].startswith("candidates[1].steps[0]:")


def test_body_size_limit_declared_and_streamed(guarded):
    headers = {"Authorization": f"Bearer {API}", "content-type": "application/json"}
    big = b'{"problem": "p", "steps": ["' + b"a" * 30000 + b'"]}'
    declared = httpx.post(f"{guarded.url}/score_steps", content=big, headers=headers)
    assert declared.status_code == 413 and "20000" in declared.json()["error"]

    def chunks():
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    streamed = httpx.post(f"{guarded.url}/score_steps", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and streamed.json()["type"] == "too_large"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"problem": "p", "steps": ["\xff\xfe"]}',  # invalid UTF-8
        b'{"problem": "p", "candidates": ["a"], "top_n": NaN}',  # non-finite number
        b'{"problem": "p", "candidates": ["a"], "top_n": 1.5}',
        b'{"problem": ["p"], "steps": ["a"]}',
        b"[]",
    ],
)
def test_malformed_bodies_are_4xx(guarded, raw):
    path = "/rerank" if b"candidates" in raw else "/score_steps"
    headers = {"Authorization": f"Bearer {API}", "content-type": "application/json"}
    response = httpx.post(f"{guarded.url}{path}", content=raw, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["type"] == "invalid_request"


def test_clients_send_their_api_key(guarded):
    from service.client import PRMClient, PRMError

    with PRMClient(guarded.url, api_key=API) as prm:
        assert len(prm.score_steps("What is 2+3?", ["2+3 = 5"])) == 1
    with PRMClient(guarded.url, api_key="wrong") as prm, pytest.raises(PRMError) as error:
        prm.score_steps("What is 2+3?", ["2+3 = 5"])
    assert (error.value.status, error.value.type) == (401, "unauthorized")
