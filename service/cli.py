"""The `prm` command."""

import signal
from typing import Annotated

import typer

from service import __version__
from service.cli_common import LogLevelOption, StoreOption, usage_error
from service.config import BATCH_TOKENS_HELP, Dtype, LogFormat, ServeConfig
from service.jobs.cli import eval_app, publish, synth, train
from service.jobs.data.cli import annotate_app, filter_app, generate
from service.logs import configure_logging
from service.prm.aggregation import Aggregation
from service.prm.checkpoint import ARCHITECTURE
from service.store import StoreError, open_store, resolve_model

# Plain click help: rich's tables cut option and variable names at 80 columns.
app = typer.Typer(
    help="Process reward models: serve step scores over HTTP, and the jobs that build them.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"prm-service {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    log_level: LogLevelOption = ServeConfig.log_level,
) -> None:
    """Process reward models: serve step scores over HTTP, and the jobs that build them."""
    configure_logging(log_level)  # every command; `prm serve` and `prm train` refine it with their own options


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            envvar="PRM_MODEL",
            help=f"A store model NAME or NAME@VERSION, a checkpoint directory, or a Hub id ({ARCHITECTURE}) "
            "(default: the newest version of the store's default model).",
            show_default=False,
        ),
    ] = ServeConfig.model,
    store: StoreOption = ServeConfig.store,
    watch: Annotated[
        float,
        typer.Option(
            envvar="PRM_WATCH",
            min=0,
            help="Every this many seconds, swap in a newer store version if one was published (0: only on "
            "POST /admin/reload).",
        ),
    ] = ServeConfig.watch,
    host: Annotated[str, typer.Option(envvar="PRM_HOST", help="Address to listen on.")] = ServeConfig.host,
    port: Annotated[int, typer.Option(envvar="PRM_PORT", help="Port to listen on.")] = ServeConfig.port,
    device: Annotated[str, typer.Option(envvar="PRM_DEVICE", help="auto, cpu, cuda or cuda:N.")] = ServeConfig.device,
    dtype: Annotated[
        Dtype,
        typer.Option(
            envvar="PRM_DTYPE",
            help="auto (the checkpoint's dtype on GPU, float32 on CPU), float32, bfloat16 or float16; the head "
            "always runs in float32.",
        ),
    ] = ServeConfig.dtype,
    threads: Annotated[
        int | None,
        typer.Option(
            envvar="PRM_THREADS",
            min=1,
            help="CPU threads for the forward (default: the cores in the process's CPU affinity, capped by its "
            "cgroup's CPU quota).",
            show_default=False,
        ),
    ] = ServeConfig.threads,
    engine_workers: Annotated[
        int | None,
        typer.Option(
            envvar="PRM_ENGINE_WORKERS",
            min=1,
            help="Batches computed at once, each by a worker with its share of the threads (default: 2 on CPU "
            "with 2 or more threads, else 1). Independent pools tolerate the HTTP work and neighbours that "
            "preempt a thread; one pool of all threads gives the lowest latency to a lone request.",
            show_default=False,
        ),
    ] = ServeConfig.engine_workers,
    max_batch_tokens: Annotated[
        int | None,
        typer.Option(
            envvar="PRM_MAX_BATCH_TOKENS",
            min=1,
            help=BATCH_TOKENS_HELP,
            show_default=False,
        ),
    ] = ServeConfig.max_batch_tokens,
    max_wait_ms: Annotated[
        float,
        typer.Option(envvar="PRM_MAX_WAIT_MS", min=0, help="Hold a partial batch this long for more work (0: never)."),
    ] = ServeConfig.max_wait_ms,
    max_queue_tokens: Annotated[
        int,
        typer.Option(
            envvar="PRM_MAX_QUEUE_TOKENS", min=0, help="Queued tokens beyond which requests get 429 (0: no bound)."
        ),
    ] = ServeConfig.max_queue_tokens,
    max_items_per_request: Annotated[
        int, typer.Option(envvar="PRM_MAX_ITEMS_PER_REQUEST", min=1, help="Items or candidates one request may carry.")
    ] = ServeConfig.max_items_per_request,
    request_timeout: Annotated[
        float,
        typer.Option(
            envvar="PRM_REQUEST_TIMEOUT",
            min=0,
            help="Seconds a request's work may wait to start before it is dropped with 504 (0: no deadline); "
            "a client can set its own with the X-Request-Timeout header.",
        ),
    ] = ServeConfig.request_timeout,
    min_shared_prefix: Annotated[
        int,
        typer.Option(
            envvar="PRM_MIN_SHARED_PREFIX",
            min=0,
            help="Compute a token prefix shared by sequences of one batch once, if at least this long (0: off).",
        ),
    ] = ServeConfig.min_shared_prefix,
    prefix_cache_mb: Annotated[
        float | None,
        typer.Option(
            envvar="PRM_PREFIX_CACHE_MB",
            min=0,
            help="MiB of attention keys and values kept for recent token prefixes, so that a request continuing "
            "one (a search step, a group's prompt) computes only its new tokens (0: off; default: 1024 on CPU, "
            "8192 on CUDA, at most a quarter of the memory free after loading; a size that does not fit is "
            "refused).",
            show_default=False,
        ),
    ] = ServeConfig.prefix_cache_mb,
    max_concurrent_requests: Annotated[
        int,
        typer.Option(
            envvar="PRM_MAX_CONCURRENT_REQUESTS",
            min=0,
            help="Scoring requests in flight beyond which 429 (0: no bound).",
        ),
    ] = ServeConfig.max_concurrent_requests,
    max_body_bytes: Annotated[
        int, typer.Option(envvar="PRM_MAX_BODY_BYTES", min=1, help="Largest request body accepted (413 beyond).")
    ] = ServeConfig.max_body_bytes,
    max_steps_per_item: Annotated[
        int, typer.Option(envvar="PRM_MAX_STEPS_PER_ITEM", min=1, help="Most steps in one solution (413 beyond).")
    ] = ServeConfig.max_steps_per_item,
    max_step_chars: Annotated[
        int, typer.Option(envvar="PRM_MAX_STEP_CHARS", min=1, help="Most characters in one step (413 beyond).")
    ] = ServeConfig.max_step_chars,
    max_problem_chars: Annotated[
        int, typer.Option(envvar="PRM_MAX_PROBLEM_CHARS", min=1, help="Most characters in a problem (413 beyond).")
    ] = ServeConfig.max_problem_chars,
    api_keys: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            envvar="PRM_API_KEYS",
            help="Bearer key for the scoring routes; repeat it, or give several in PRM_API_KEYS separated by "
            "commas or spaces (prefer the variable: command lines are visible to other users).",
        ),
    ] = None,
    admin_keys: Annotated[
        list[str] | None,
        typer.Option(
            "--admin-key", envvar="PRM_ADMIN_KEYS", help="Bearer key for /admin/* (it also passes as an API key)."
        ),
    ] = None,
    protect_metrics: Annotated[
        bool, typer.Option(envvar="PRM_PROTECT_METRICS", help="Require an API key for /metrics too.")
    ] = ServeConfig.protect_metrics,
    drain_timeout: Annotated[
        float,
        typer.Option(envvar="PRM_DRAIN_TIMEOUT", min=0, help="Seconds to finish admitted requests after SIGTERM."),
    ] = ServeConfig.drain_timeout,
    vllm_url: Annotated[
        str | None,
        typer.Option(
            envvar="PRM_VLLM_URL",
            help="Score through this vLLM server's /pooling (started with --runner pooling) instead of loading "
            "the weights here: --model then names the checkpoint whose tokenizer and config are read.",
            show_default=False,
        ),
    ] = ServeConfig.vllm_url,
    vllm_model: Annotated[
        str | None,
        typer.Option(
            envvar="PRM_VLLM_MODEL",
            help="The model's name on the vLLM server (default: --model as given, or its directory).",
            show_default=False,
        ),
    ] = ServeConfig.vllm_model,
    reward_aggregation: Annotated[
        Aggregation,
        typer.Option(
            envvar="PRM_REWARD_AGGREGATION", help="How /get_reward turns a response's step scores into its reward."
        ),
    ] = ServeConfig.reward_aggregation,
    log_level: LogLevelOption = ServeConfig.log_level,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar="PRM_LOG_FORMAT",
            help="text, or json: one JSON object per line, access-log fields as keys.",
        ),
    ] = ServeConfig.log_format,
) -> None:
    """Serve /score_steps, /rerank, /health, /ready, /metrics and /v1/models over HTTP."""
    config = ServeConfig(**locals())  # the parameters are ServeConfig's fields, by name
    if config.vllm_url and config.prefix_cache_mb:
        usage_error("prm serve: --prefix-cache-mb is for a model loaded here; vLLM behind --vllm-url has its own")
    try:  # a missing store, a typo in --model or a store without a default: one line, before anything starts
        resolve_model(config.model, open_store(config.store))
    except StoreError as error:
        usage_error(f"prm serve: {error}")
    import uvicorn

    from service.api.app import create_app

    configure_logging(config.log_level, config.log_format)
    application = create_app(config, on_fatal=lambda: setattr(server, "should_exit", True))
    server = _server_class()(
        uvicorn.Config(
            application,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            log_config=None,  # uvicorn's own lines go through configure_logging's handler, in its format
            access_log=False,  # service.api.middleware.RequestLog writes the access log, with request ids
            timeout_graceful_shutdown=config.drain_timeout,
        )
    )
    # uvicorn re-raises the signal that stopped it once it is done; a graceful drain then exits 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    server.run()
    if application.state.runtime.fatal_error:
        typer.echo(f"prm serve: {application.state.runtime.fatal_error}", err=True)
        raise typer.Exit(1)


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: readiness turns 503 at once, then uvicorn stops accepting and drains."""

        def handle_exit(self, sig, frame) -> None:
            self.config.app.state.runtime.draining = True
            super().handle_exit(sig, frame)

    return DrainingServer


# The offline jobs: data (generate -> annotate -> filter) and model (synth, train, eval, publish).
app.command()(generate)
app.add_typer(annotate_app, name="annotate")
app.add_typer(filter_app, name="filter")
app.command()(synth)
app.command()(train)
app.add_typer(eval_app, name="eval")
app.command()(publish)
