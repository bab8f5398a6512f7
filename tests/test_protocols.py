"""vLLM's /pooling and OpenRLHF's /get_reward against a real `prm serve`, checked with the model card's code.

tests/test_vllm.py checks the same requests against a real vLLM server.
"""

import math

import httpx
import pytest

from tests.model_card import ModelCardPRM

TOLERANCE = 1e-5


def formatted(reference: ModelCardPRM, item: dict) -> str:
    """The conversation as a vLLM client sends it: the chat template applied, `<extra_0>` after each step."""
    return reference.conversation_text(item["problem"], item["steps"])


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_pooling_takes_vllms_four_input_shapes(server, reference, processbench_items):
    items = processbench_items[:3]
    texts = [formatted(reference, item) for item in items]
    ids = [reference.conversation(item["problem"], item["steps"])[0].tolist() for item in items]
    expected = [reference.step_rewards(item["problem"], item["steps"]) for item in items]
    shapes = {"text": texts[0], "texts": texts, "ids": ids[0], "lists of ids": ids}
    for shape, given in shapes.items():
        response = post(server, "/pooling", {"model": "tiny-prm", "input": given, "task": "token_classify"})
        assert response.status_code == 200, (shape, response.text)
        body = response.json()
        assert body["object"] == "list" and body["model"] == "tiny-prm" and body["id"].startswith("pool-")
        count = 1 if shape in ("text", "ids") else 3
        assert [row["index"] for row in body["data"]] == list(range(count))
        for row, scores in zip(body["data"], expected, strict=False):
            assert row["object"] == "pooling"
            assert [p for _, p in row["data"]] == pytest.approx(scores, abs=TOLERANCE)
            assert all(negative + positive == pytest.approx(1.0) for negative, positive in row["data"])
        tokens = sum(len(sequence) for sequence in ids[:count])
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}


def test_pooling_names_what_it_refuses(server):
    cases = [
        ({"input": "x", "truncate_prompt_tokens": 5}, "truncate_prompt_tokens: is not supported"),
        ({"input": "x", "use_activation": False}, "use_activation: false (raw logits) is not supported"),
        ({"input": "x", "model": "other"}, "model: 'other' is not served here; this server serves 'tiny-prm'"),
        ({"input": ["x", 3]}, "input: must be a text, a list of texts, a list of token ids, or a list of lists"),
        ({"input": [[1, 2], [10**9]]}, "input[1][0]: is 1000000000, not a token id"),
        ({"input": "x", "task": "embed"}, "task: Input should be 'token_classify'"),
        ({"input": []}, "input: must not be empty"),
    ]
    for body, message in cases:
        response = post(server, "/pooling", body)
        assert response.status_code == 422 and response.json()["error"].startswith(message), response.text


def test_pooling_without_separators_returns_no_rows(server):
    body = post(server, "/pooling", {"input": "What is 2+3?"}).json()
    assert body["data"][0]["data"] == [] and body["usage"]["prompt_tokens"] > 0


PROMPT_FORMATS = {
    "chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{p}<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{p}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "plain": "Question: {p}\nAnswer: ",
}
ENDINGS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "plain": ""}


@pytest.mark.parametrize("kind", PROMPT_FORMATS)
def test_get_reward_scores_the_response_of_each_sample(server, reference, processbench_items, kind):
    items = processbench_items[:2]
    problem = items[0]["problem"]
    prompt = PROMPT_FORMATS[kind].format(p=problem)
    queries = [prompt + "\n\n".join(item["steps"]) + ENDINGS[kind] for item in items]
    response = post(server, "/get_reward", {"query": queries, "prompts": [prompt] * 2, "labels": ["1", "2"]})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = [reference.step_rewards(problem if kind != "plain" else prompt.strip(), item["steps"]) for item in items]
    products = [pytest.approx(math.prod(scores), rel=1e-4) for scores in expected]
    assert body["rewards"] == products and body["scores"] == products
    assert body["extra_logs"]["min_step_score"] == [pytest.approx(min(s), abs=TOLERANCE) for s in expected]
    assert body["extra_logs"]["num_steps"] == [len(item["steps"]) for item in items]


def test_get_reward_names_the_malformed_sample(server):
    prompt = PROMPT_FORMATS["chatml"].format(p="What is 2+3?")
    cases = [
        (
            {"query": [prompt + "5", "elsewhere"], "prompts": [prompt, prompt]},
            "query[1]: does not begin with prompts[1]",
        ),
        ({"query": [prompt + "<|im_end|>"], "prompts": [prompt]}, "query[0]: has no response text after its prompt"),
        ({"query": [prompt + "5"]}, "prompts: must give one prompt per query (1), not none"),
        ({"query": [prompt + "5 <extra_0>"], "prompts": [prompt]}, "query[0].steps[0]: must not contain"),
    ]
    for body, message in cases:
        response = post(server, "/get_reward", body)
        assert response.status_code == 422 and response.json()["error"].startswith(message), response.text
