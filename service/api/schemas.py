"""Request and response bodies of the HTTP contract (../shared/DESIGN.md)."""

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from service.prm.aggregation import Aggregation
from service.prm.formatting import ScoringInput, split_steps


class Strict(BaseModel):
    """Request bodies: unknown fields and loose types are refused, naming the field."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ScoreStepsRequest(Strict):
    """Either one solution (`problem`, `steps`, `system`?) or a batch (`items`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["problem", "steps"], "not": {"required": ["items"]}},
                {"required": ["items"], "not": {"anyOf": [{"required": [k]} for k in ("problem", "steps", "system")]}},
            ]
        }
    )

    problem: str | None = None
    steps: list[str] | None = Field(None, min_length=1)
    system: str | None = None
    items: list[ScoringInput] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> "ScoreStepsRequest":
        if self.items is not None:
            if self.problem is not None or self.steps is not None or self.system is not None:
                raise ValueError("give either `items` or `problem` and `steps`, not both")
        elif self.problem is None or self.steps is None:
            raise ValueError("`problem` and `steps` are required (or `items` for a batch)")
        return self

    def as_items(self) -> list[ScoringInput]:
        if self.items is not None:
            return self.items
        return [ScoringInput(self.problem, self.steps, self.system)]


class Usage(BaseModel):
    tokens: int


class StepScores(BaseModel):
    step_scores: list[float]


class _Scored(BaseModel):
    model: str
    model_version: str


class ScoreStepsResponse(_Scored):
    step_scores: list[float]
    usage: Usage


class ScoreBatchResponse(_Scored):
    results: list[StepScores]
    usage: Usage


class CandidateSteps(Strict):
    steps: list[str] = Field(min_length=1)


def _as_candidate_steps(candidate: Any) -> Any:
    """The three ways to send a candidate, as one shape: a list of steps, `{"steps": [...]}`, or raw text."""
    if isinstance(candidate, str):
        steps = split_steps(candidate)
        if not steps:
            raise PydanticCustomError("empty_candidate", "has no text between blank lines to score")
        return {"steps": steps}
    if isinstance(candidate, list):
        return {"steps": candidate}
    if isinstance(candidate, dict):
        return candidate
    raise PydanticCustomError("candidate_type", 'must be a list of steps, {"steps": [...]} or raw text')


Candidate = Annotated[
    CandidateSteps,
    BeforeValidator(_as_candidate_steps, json_schema_input_type=list[str] | CandidateSteps | str),
]


class RerankRequest(Strict):
    problem: str
    candidates: list[Candidate] = Field(
        min_length=1, description="Step lists, {steps: [...]} objects, or raw text split into steps on blank lines."
    )
    aggregation: Aggregation = "product"
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_step_scores: bool = False
    system: str | None = None


class RerankResult(BaseModel):
    index: int
    score: float
    step_scores: list[float] | None = None


class RerankResponse(_Scored):
    results: list[RerankResult]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    version: str
    family: str
    dtype: str
    device: str
    max_length: int
    prefix_cache_mb: float = Field(description="Size of the prefix cache across requests (0: off).")
    threads: int = Field(description="CPU threads the forward runs on (--threads, or what the process may use).")
    threads_from: str = Field(description="Where the thread count comes from: --threads, CPU affinity or cgroup quota.")
    engine_workers: int = Field(description="Batches computed at once, each with its share of the threads.")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    error: str
    type: str
    request_id: str | None = Field(None, description="The X-Request-ID of the request: quote it in a report.")
