"""`prm generate`, `prm annotate mc|judge`, `prm filter consensus`: the data jobs' command line.

Exit codes: 0 done, 1 some records failed (rerun the same command to retry them), 2 the job could not
start (server unreachable, unknown model, unreadable input, bad option).
"""

import asyncio
import functools
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from service.cli_common import input_errors
from service.config import ServeConfig
from service.jobs.data.answers import GRADE_TIMEOUT, GRADE_WORKERS
from service.jobs.data.backends import Backend, BackendUnavailable, Sampling
from service.jobs.data.resumable import WHOLE, JsonlOutput, Shard
from service.jobs.data.runner import JobStats
from service.prm.formatting import DEFAULT_SYSTEM

annotate_app = typer.Typer(
    help="Label each step of generated responses: Monte Carlo rollouts (mc) or an LLM judge (judge).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
filter_app = typer.Typer(
    help="Turn annotated responses into PRM training records.", no_args_is_help=True, rich_markup_mode=None
)


class BackendKind(StrEnum):
    openai = "openai"
    transformers = "transformers"


@dataclass(frozen=True)
class Client:
    """How a job reaches its language model, as the command line gives it (`client_options`); the defaults of
    its options."""

    model: str
    backend: BackendKind = BackendKind.openai
    base_url: str | None = None
    api_key: str | None = None
    tokenizer: str | None = None  # renders continuation prompts (annotate mc); None: none needed
    concurrency: int = 64
    request_timeout: float = 600.0
    max_retries: int = 5
    device: str = ServeConfig.device  # --backend transformers
    batch_size: int = 32  # --backend transformers


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


Model = Annotated[
    str,
    typer.Option(help="Model name as the server lists it at /v1/models, or a local path with --backend transformers."),
]
BaseUrl = Annotated[
    str | None,
    typer.Option(
        envvar="OPENAI_BASE_URL",
        help="OpenAI-compatible server, ending in /v1 (vLLM, SGLang, transformers serve): http://host:8000/v1.",
    ),
]
ApiKey = Annotated[
    str | None, typer.Option(envvar="OPENAI_API_KEY", help="Bearer key for the server (prefer the variable).")
]
Kind = Annotated[
    BackendKind,
    typer.Option("--backend", help="openai: a server at --base-url; transformers: load --model in this process."),
]
Device = Annotated[str, typer.Option(help="--backend transformers: auto, cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option(min=1, help="--backend transformers: sequences per generate call.")]
Concurrency = Annotated[int, typer.Option(min=1, help="Records in flight at once (requests to the server).")]
ShardOption = Annotated[
    Shard,
    typer.Option(
        parser=_shard,
        metavar="I/N",
        help="Process only part I of N (0-based), split by a hash of the id: N machines run 0/N .. N-1/N.",
    ),
]
MaxRetries = Annotated[
    int, typer.Option(min=0, help="Retries of a request after 429, 5xx, timeouts or connection errors.")
]
RequestTimeout = Annotated[float, typer.Option(min=1, help="Seconds one request may take.")]
TopP = Annotated[float, typer.Option(min=0, max=1, help="Nucleus sampling.")]
System = Annotated[
    str,
    typer.Option(help="System prompt of the policy's conversation ('' for none); generate and mc must agree."),
]
GradeWorkers = Annotated[int, typer.Option(min=1, help="Processes grading answers with math-verify.")]
GradeTimeout = Annotated[
    float, typer.Option(min=0.1, help="Seconds one grade may take; beyond, it is no match and its worker restarts.")
]
Out = Annotated[Path, typer.Option(help="Output JSONL; appended to: a rerun skips the ids already there (resume).")]
Responses = Annotated[Path, typer.Option("--in", exists=True, dir_okay=False, help="Responses from `prm generate`.")]


CLIENT_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
    for name, annotation, default in [
        ("model", Model, inspect.Parameter.empty),
        ("base_url", BaseUrl, Client.base_url),
        ("api_key", ApiKey, Client.api_key),
        ("backend", Kind, Client.backend),
        ("concurrency", Concurrency, Client.concurrency),
        ("max_retries", MaxRetries, Client.max_retries),
        ("request_timeout", RequestTimeout, Client.request_timeout),
        ("device", Device, Client.device),
        ("batch_size", BatchSize, Client.batch_size),
    ]
]


def client_options(command: Callable) -> Callable:
    """Give `command` the options of how a job reaches its model, as one `client: Client` argument.

    Typer reads a command's options from its signature, so these are written once, here, and added to the
    signature of each data job that talks to a model (generate, annotate mc, annotate judge).
    """
    own = [parameter for parameter in inspect.signature(command).parameters.values() if parameter.name != "client"]
    # Typer reads types from `__annotations__` too; both must list what the command line offers.

    @functools.wraps(command)
    def with_client(**values):
        client = Client(**{parameter.name: values.pop(parameter.name) for parameter in CLIENT_OPTIONS})
        return command(client=client, **values)

    with_client.__signature__ = inspect.Signature([*own, *CLIENT_OPTIONS])
    with_client.__annotations__ = {parameter.name: parameter.annotation for parameter in [*own, *CLIENT_OPTIONS]}
    return with_client


@client_options
def generate(
    problems: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Problems JSONL: {id, problem, answer} records, or a GSM8K or MATH500 test file as published.",
        ),
    ],
    out: Out,
    n: Annotated[int, typer.Option(min=1, help="Responses per problem.")] = 8,
    temperature: Annotated[float, typer.Option(min=0, help="Sampling temperature.")] = Sampling.temperature,
    top_p: TopP = Sampling.top_p,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens in a response.")] = Sampling.max_tokens,
    system: System = DEFAULT_SYSTEM,
    shard: ShardOption = str(WHOLE),
    grade_workers: GradeWorkers = GRADE_WORKERS,
    grade_timeout: GradeTimeout = GRADE_TIMEOUT,
    *,
    client: Client,
) -> None:
    """Sample N responses per problem from a policy, split them into steps on blank lines, grade their answers.

    Writes {id: <problem id>/<i>, problem_id, problem, answer, steps, final_answer, correct, policy}.

    The final answer is the last \\boxed{} (else "the answer is X", "#### X", the last number), graded by math-verify.

    Rerun the same command to finish an interrupted run; --shard I/N splits the problems between machines.
    """
    from service.jobs.data.answers import Grader
    from service.jobs.data.generate import generate as job

    backend = _backend(client, Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens))

    async def run(output: JsonlOutput) -> JobStats:
        async with Grader(grade_workers, grade_timeout) as grader:
            return await job(
                problems, output, backend, grader, n=n, system=system or None, shard=shard,
                concurrency=client.concurrency,
            )  # fmt: skip

    _run(out, backend, run)


@annotate_app.command("mc")
@client_options
def annotate_mc(
    responses: Responses,
    out: Out,
    k: Annotated[int, typer.Option(min=1, help="Completions from each step.")] = 8,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="Tokenizer (path or Hub id) that renders continuation prompts (default: --model)."),
    ] = None,
    temperature: Annotated[
        float, typer.Option(min=0, help="Sampling temperature of the completions.")
    ] = Sampling.temperature,
    top_p: TopP = Sampling.top_p,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens in a completion.")] = Sampling.max_tokens,
    system: System = DEFAULT_SYSTEM,
    shard: ShardOption = str(WHOLE),
    grade_workers: GradeWorkers = GRADE_WORKERS,
    grade_timeout: GradeTimeout = GRADE_TIMEOUT,
    *,
    client: Client,
) -> None:
    """Monte Carlo labels: from each step, K completions continue the solution; a step is wrong if none of
    them reaches the gold answer.

    Adds "mc": {k, correct: completions that reached the answer from each step, first_error: first step, or -1}.

    Annotation stops at the first wrong step. Use the policy that wrote the responses, and the same --system.

    Continuations go to /v1/completions, with a prompt that --tokenizer renders, ending inside the assistant turn.

    Rerun the same command to finish an interrupted run; --shard I/N splits the responses between machines.
    """
    from service.jobs.data.annotate_mc import annotate_mc as job
    from service.jobs.data.answers import Grader

    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    backend = _backend(replace(client, tokenizer=tokenizer or client.model), sampling)

    async def run(output: JsonlOutput) -> JobStats:
        async with Grader(grade_workers, grade_timeout) as grader:
            return await job(
                responses, output, backend, grader, k=k, system=system or None, shard=shard,
                concurrency=client.concurrency,
            )  # fmt: skip

    _run(out, backend, run)


@annotate_app.command("judge")
@client_options
def annotate_judge(
    responses: Responses,
    out: Out,
    temperature: Annotated[float, typer.Option(min=0, help="Sampling temperature of the judge.")] = 0.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens in a critique.")] = 4096,
    shard: ShardOption = str(WHOLE),
    *,
    client: Client,
) -> None:
    """LLM-as-a-judge labels: the judge reviews the paragraphs in order and boxes the index of the first wrong
    one, or -1.

    Adds "judge": {first_error, model, critique}; first_error is null unless the critique's last \\boxed{} is -1
    or a paragraph's index (an answer is never guessed).

    Rerun the same command to finish an interrupted run; --shard I/N splits the responses between machines.
    """
    from service.jobs.data.annotate_judge import annotate_judge as job

    backend = _backend(client, Sampling(temperature=temperature, max_tokens=max_tokens))

    async def run(output: JsonlOutput) -> JobStats:
        return await job(responses, output, backend, shard=shard, concurrency=client.concurrency)

    _run(out, backend, run)


@filter_app.command("consensus")
def filter_consensus(
    mc: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Output of `prm annotate mc`.")],
    judge: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Output of `prm annotate judge`.")],
    out: Annotated[Path, typer.Option(help="TRL stepwise-supervision JSONL (rewritten whole).")],
    report: Annotated[Path | None, typer.Option(help="Where to write the report as JSON (default: print it).")] = None,
) -> None:
    """Keep responses where MC and the judge agree on the first error (both -1 counts) as TRL records.

    Joins on id and writes {id, prompt, completions, labels}: the steps up to and including the first error,
    true before it and false at it (all steps, all true, if there is none).

    The report: records in, kept, dropped (disagreement, unparseable judge, on one side only), the agreement
    matrix by first-error position (rows MC, columns judge), the share of kept with a right answer but a wrong
    process.
    """
    from service.jobs.data.consensus import consensus

    with input_errors():
        summary = consensus(mc, judge, out)
    text = json.dumps(summary, indent=2)
    if report is None:
        typer.echo(text)
    else:
        report.write_text(text + "\n")
    typer.echo(
        f"prm filter consensus: kept {summary['kept']} of {summary['joined']} joined responses "
        f"({summary['dropped_disagreement']} disagreed, {summary['dropped_unparseable']} unparseable, "
        f"{summary['dropped_missing']} on one side only)",
        err=True,
    )


def _backend(client: Client, sampling: Sampling) -> Backend:
    if client.backend is BackendKind.transformers:
        from service.jobs.data.transformers_backend import TransformersBackend

        return TransformersBackend(client.model, sampling, device=client.device, batch_size=client.batch_size)
    if not client.base_url:
        raise typer.BadParameter(
            "needed with --backend openai (e.g. http://localhost:8000/v1)", param_hint="--base-url"
        )
    from service.jobs.data.openai_backend import OpenAIBackend

    return OpenAIBackend(
        client.base_url,
        client.model,
        sampling,
        api_key=client.api_key,
        tokenizer=client.tokenizer,
        concurrency=client.concurrency,
        timeout=client.request_timeout,
        max_retries=client.max_retries,
    )


def _run(out: Path, backend: Backend, job: Callable[[JsonlOutput], Awaitable[JobStats]]) -> None:
    """Start the backend, run the job into `out`, print the summary; exit 1 if records failed, 2 if it could not
    start."""

    async def main() -> JobStats:
        try:
            await backend.start()
            with JsonlOutput(out) as output:
                return await job(output)
        finally:
            await backend.close()

    # Retries, timeouts and failed records are logged as warnings (service.logs, set up by `prm` for every command).
    with input_errors(BackendUnavailable):
        stats = asyncio.run(main())
    typer.echo(stats.summary(backend.usage), err=True)
    if stats.failed:
        typer.echo(f"{stats.failed} records failed; rerun the same command to retry them", err=True)
        raise typer.Exit(1)
