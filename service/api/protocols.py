"""Other servers' scoring protocols, so that a client moves over by changing its URL.

- `POST /pooling`: vLLM's pooling API with the `token_classify` task, as `vllm serve` answers it for
  Qwen2ForProcessRewardModel: already formatted text (chat template applied, `<extra_0>` after each step)
  or token ids in, `[p_negative, p_positive]` at every separator out.
- `POST /get_reward`: OpenRLHF's remote reward model (`--reward.remote_url`): prompt + response texts in,
  one reward per sample out, the aggregated step score of the response's steps (split on blank lines).

Auth, admission, limits, deadlines and metrics are those of /score_steps; errors keep this service's shape.
"""

import re
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from service.api.routes import (
    ERRORS,
    SCORING,
    check_count,
    check_problem,
    check_steps,
    conversations,
    score_request,
)
from service.api.schemas import Strict
from service.prm.aggregation import aggregate
from service.prm.errors import InvalidInput
from service.prm.formatting import ScoringInput, split_steps

router = APIRouter()


def _one_input_shape(given: Any) -> Any:
    """vLLM's four input shapes, and a plain error for anything else (not one per branch of the union)."""

    def token_ids(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)

    if isinstance(given, str) or token_ids(given):
        return given
    if isinstance(given, list) and (all(isinstance(v, str) for v in given) or all(token_ids(v) for v in given)):
        return given
    raise PydanticCustomError(
        "pooling_input", "must be a text, a list of texts, a list of token ids, or a list of lists of token ids"
    )


PoolingInput = Annotated[str | list[str] | list[int] | list[list[int]], BeforeValidator(_one_input_shape)]


class PoolingRequest(Strict):
    model: str | None = None
    input: PoolingInput = Field(
        description="Formatted conversations: one text, several, one list of token ids, or several."
    )
    task: Literal["token_classify"] | None = "token_classify"
    use_activation: bool | None = None
    add_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    encoding_format: Literal["float"] = "float"
    request_id: str | None = None
    user: str | None = None


class PoolingData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[list[float]]


class PoolingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class PoolingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: PoolingUsage


@router.post("/pooling", responses=ERRORS, dependencies=SCORING)
async def pooling(body: PoolingRequest, request: Request) -> PoolingResponse:
    """vLLM's `/pooling` (task `token_classify`): `[p_negative, p_positive]` at every step separator."""
    runtime = request.app.state.runtime
    served = runtime.describe()["id"]
    if body.model is not None and body.model != served:
        raise InvalidInput("model", f"{body.model!r} is not served here; this server serves {served!r}")
    if body.truncate_prompt_tokens is not None:
        raise InvalidInput("truncate_prompt_tokens", "is not supported: nothing is ever truncated here")
    if body.use_activation is False:
        raise InvalidInput("use_activation", "false (raw logits) is not supported: scores are probabilities")
    single = isinstance(body.input, str) or (bool(body.input) and isinstance(body.input[0], int))
    inputs = [body.input] if single else body.input
    if not inputs:
        raise InvalidInput("input", "must not be empty")
    check_count(runtime, "input", len(inputs))
    fields = ["input"] if single else [f"input[{index}]" for index in range(len(inputs))]

    def encode(prm):
        return [
            prm.formatter.encode_formatted(given, field, body.add_special_tokens)
            for field, given in zip(fields, inputs, strict=True)
        ]

    scored = await score_request(request, encode)
    return PoolingResponse(
        id=f"pool-{body.request_id or uuid.uuid4().hex}",
        created=int(time.time()),
        model=scored.model,
        data=[
            PoolingData(index=index, data=[[1.0 - p, p] for p in scores])
            for index, scores in enumerate(scored.step_scores)
        ],
        usage=PoolingUsage(prompt_tokens=scored.tokens, total_tokens=scored.tokens),
    )


class RewardRequest(Strict):
    query: list[str] = Field(min_length=1, description="Each sample's prompt followed by its response.")
    prompts: list[str] | None = Field(None, description="Each sample's prompt, as it begins its query.")
    labels: list | None = Field(None, description="Reference answers; a PRM needs none, so they are ignored.")


class RewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


# The last user turn of a rendered chat prompt: ChatML (Qwen), Llama 3; anything else is taken as plain text.
_USER_TURNS = (
    re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S),
    re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S),
)
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


def problem_of(prompt: str) -> str:
    """The problem a policy was asked: the last user turn of a chat prompt, else the whole prompt."""
    for pattern in _USER_TURNS:
        turns = pattern.findall(prompt)
        if turns:
            return turns[-1].strip()
    return prompt.strip()


def response_of(query: str, prompt: str) -> str:
    """The policy's response: the query after its prompt, without trailing end-of-turn or end-of-text marks."""
    response = query[len(prompt) :].strip()
    while ending := next((mark for mark in _END_MARKERS if response.endswith(mark)), None):
        response = response[: -len(ending)].rstrip()
    return response


@router.post("/get_reward", responses=ERRORS, dependencies=SCORING)
async def get_reward(body: RewardRequest, request: Request) -> RewardResponse:
    """OpenRLHF's remote reward: the aggregated step score of each response (`--reward-aggregation`)."""
    runtime = request.app.state.runtime
    check_count(runtime, "query", len(body.query))
    if body.prompts is None or len(body.prompts) != len(body.query):
        given = "none" if body.prompts is None else len(body.prompts)
        raise InvalidInput("prompts", f"must give one prompt per query ({len(body.query)}), not {given}")
    items = []
    for index, (query, prompt) in enumerate(zip(body.query, body.prompts, strict=True)):
        if not query.startswith(prompt):
            raise InvalidInput(f"query[{index}]", f"does not begin with prompts[{index}]")
        problem, steps = problem_of(prompt), split_steps(response_of(query, prompt))
        if not steps:
            raise InvalidInput(f"query[{index}]", "has no response text after its prompt to score")
        check_problem(runtime, f"prompts[{index}]", problem)
        check_steps(runtime, f"query[{index}].steps", steps)
        items.append((f"query[{index}]", ScoringInput(problem, steps)))
    scored = await score_request(request, conversations(items))
    how = runtime.config.reward_aggregation
    rewards = [aggregate(scores, how) for scores in scored.step_scores]
    return RewardResponse(
        rewards=rewards,
        scores=rewards,
        extra_logs={
            "min_step_score": [min(scores) for scores in scored.step_scores],
            "num_steps": [float(len(scores)) for scores in scored.step_scores],
        },
    )
