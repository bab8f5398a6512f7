"""`prm synth`, `prm train`, `prm eval processbench|bon` and `prm publish`: the model half of the refresh loop."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from service.config import Dtype, LogLevel, SaveDtype
from service.logs import configure_logging, process_rank
from service.store import DEFAULT_STORE, ModelStore

eval_app = typer.Typer(
    help="Measure a PRM the way the paper does: ProcessBench earliest-error F1, and best-of-N reranking.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ModelOption = Annotated[
    str | None,
    typer.Option(
        help="A store NAME or NAME@VERSION, a checkpoint directory or a Hub id (default: the store's default model).",
        show_default=False,
    ),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        envvar="PRM_STORE",
        help="The model store directory (default: ./model_store if it exists, else the bundled demo store).",
        show_default=False,
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (as for `prm serve`).")]
DtypeOption = Annotated[
    Dtype,
    typer.Option(
        help="auto (the checkpoint's dtype on GPU, float32 on CPU), float32, bfloat16 or float16.",
    ),
]
LogLevelOption = Annotated[LogLevel, typer.Option(envvar="PRM_LOG_LEVEL", help="Log level.")]
BatchTokensOption = Annotated[
    int | None,
    typer.Option(
        min=1, help="Token budget of one packed batch (default: 2048 on CPU, 16384 on CUDA).", show_default=False
    ),
]


def synth(
    out: Annotated[Path, typer.Option(help="Directory for train.jsonl, heldout.jsonl and bon.jsonl.")],
    train: Annotated[int, typer.Option(min=1, help="Training records (TRL stepwise supervision).")] = 20000,
    heldout: Annotated[int, typer.Option(min=1, help="Held-out ProcessBench items, half of them faulty.")] = 1000,
    bon_problems: Annotated[int, typer.Option(min=0, help="Problems in the best-of-N set.")] = 100,
    bon_n: Annotated[int, typer.Option(min=1, help="Candidate solutions per best-of-N problem.")] = 8,
    error_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of faulty training solutions (held-out: always half).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same files.")] = 0,
) -> None:
    """Write a synthetic arithmetic-reasoning world with exact step labels.

    Multi-step word problems with exact solutions, and faulty ones with one injected error (a wrong
    calculation, a wrong number copied, a wrong operation, or a slip the final answer survives):
    train.jsonl as TRL stepwise records for `prm train`, heldout.jsonl as ProcessBench items and
    bon.jsonl as `prm generate` responses for `prm eval`.
    """
    from service.jobs.synth import synthesize

    for kind, path in synthesize(out, train, heldout, bon_problems, bon_n, seed, error_rate).items():
        typer.echo(f"{kind}: {path}")


def train(
    base: Annotated[
        str,
        typer.Option(
            help="Where to start: a Qwen2 PRM checkpoint (continue training), a Qwen2 causal LM directory or "
            "Hub id (e.g. Qwen/Qwen2.5-Math-7B-Instruct: its LM head is replaced by a fresh PRM head), or "
            "'scratch' (a new small model and a tokenizer trained on the data; see the --scratch-* options)."
        ),
    ],
    data: Annotated[
        list[str],
        typer.Option(
            help="TRL stepwise records (prompt, completions, labels): a JSON/JSONL file or a Hub dataset id; "
            "repeat for several."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output directory: the checkpoint, prm.json, and checkpoints/.")],
    epochs: Annotated[float, typer.Option(min=0, help="Passes over the data.")] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimizer steps (-1: use --epochs).")] = -1,
    lr: Annotated[float, typer.Option(min=0, help="Peak learning rate, reached after warm-up.")] = 1e-5,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per device per step.")] = 8,
    grad_accum: Annotated[int, typer.Option(min=1, help="Steps to accumulate before an optimizer update.")] = 1,
    max_length: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Longest conversation in tokens; longer records are left out and counted "
            "(default: the model's maximum).",
            show_default=False,
        ),
    ] = None,
    warmup_ratio: Annotated[float, typer.Option(min=0, max=1, help="Share of steps for linear warm-up.")] = 0.03,
    lr_scheduler: Annotated[
        str, typer.Option(help="Learning-rate schedule after warm-up: cosine, linear, constant_with_warmup, ...")
    ] = "cosine",
    weight_decay: Annotated[float, typer.Option(min=0, help="AdamW weight decay.")] = 0.0,
    lm_loss: Annotated[
        bool,
        typer.Option(
            help="Add an auxiliary next-token loss on the steps labelled right, through the input embeddings "
            "(nothing extra is saved): for small models trained from scratch, like the demo PRM."
        ),
    ] = False,
    digit_check: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Share of records that also train as a copy with the last digit of one result (a number after "
            "an '=') in a step labelled right replaced, wrong from there; the score head is trained at every "
            "token of the steps, not only at separators. For arithmetic data whose results all follow from the "
            "problem, like the demo's.",
        ),
    ] = 0.0,
    group_by_length: Annotated[
        bool,
        typer.Option(
            help="Batch conversations of similar length together (shuffled in groups), so that less of each "
            "batch is padding: 1.4 times the steps per second for the demo PRM on CPU (loadtest/bench_train.py)."
        ),
    ] = False,
    bf16: Annotated[bool, typer.Option(help="Mixed precision in bfloat16 (GPUs).")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations to save memory.")] = False,
    fsdp: Annotated[
        str,
        typer.Option(help="Trainer FSDP mode, e.g. 'full_shard auto_wrap' (under torchrun, on CUDA GPUs)."),
    ] = "",
    deepspeed: Annotated[str | None, typer.Option(help="A DeepSpeed JSON config (under deepspeed/torchrun).")] = None,
    save_dtype: Annotated[
        SaveDtype,
        typer.Option(
            help="dtype of the weights written to OUT: bfloat16 halves a 7B PRM (about 15 GB, as the published "
            "Qwen2.5-Math-PRM-7B) where float32 keeps the master weights; checkpoints/ keep the training state."
        ),
    ] = "float32",
    logging_steps: Annotated[int, typer.Option(min=1, help="Log the loss every this many steps.")] = 10,
    save_steps: Annotated[int, typer.Option(min=1, help="Write a resumable checkpoint every this many steps.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed (data order and new weights).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in OUT/checkpoints.")] = True,
    eval_processbench: Annotated[
        list[str] | None,
        typer.Option(help="ProcessBench files to evaluate the result on; the report goes into prm.json."),
    ] = None,
    scratch_hidden_size: Annotated[int, typer.Option(help="Hidden size of a scratch model.")] = 64,
    scratch_layers: Annotated[int, typer.Option(help="Layers of a scratch model.")] = 8,
    scratch_heads: Annotated[int, typer.Option(help="Attention heads of a scratch model.")] = 4,
    scratch_kv_heads: Annotated[int, typer.Option(help="Key/value heads of a scratch model.")] = 4,
    scratch_intermediate_size: Annotated[int, typer.Option(help="MLP width of a scratch model.")] = 192,
    scratch_vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary of a scratch model.")] = 512,
    scratch_max_length: Annotated[int, typer.Option(help="Maximum positions of a scratch model.")] = 1024,
    log_level: LogLevelOption = "info",
) -> None:
    """Train a PRM on stepwise supervision: cross-entropy on the two head logits at step separators only.

    Conversations are formatted by the service's own formatter, so the model is trained on exactly
    what it will be served. The output directory has the Qwen2.5-Math-PRM-7B layout (prm serve and
    vLLM load it) plus prm.json; publish it with `prm publish OUT --name NAME`. Several processes:
    `torchrun --nproc-per-node 8 -m service train ... --deepspeed deploy/deepspeed/zero3.json` (or
    --fsdp 'full_shard auto_wrap' on CUDA GPUs); rank 0 writes the output.
    """
    from service.jobs.train.backbone import ScratchShape
    from service.jobs.train.run import TrainOptions, train_and_evaluate

    main_process = process_rank() == 0  # under torchrun / accelerate launch, only rank 0 logs and prints
    configure_logging(log_level if main_process else "error")
    options = TrainOptions(
        base=base,
        data=data,
        out=out,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        warmup_ratio=warmup_ratio,
        lr_scheduler=lr_scheduler,
        weight_decay=weight_decay,
        lm_loss=lm_loss,
        digit_check=digit_check,
        group_by_length=group_by_length,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        fsdp=fsdp,
        deepspeed=deepspeed,
        save_dtype=save_dtype,
        logging_steps=logging_steps,
        save_steps=save_steps,
        seed=seed,
        resume=resume,
        scratch=ScratchShape(
            scratch_hidden_size,
            scratch_layers,
            scratch_heads,
            scratch_kv_heads,
            scratch_intermediate_size,
            scratch_vocab_size,
            scratch_max_length,
        ),
    )
    with _input_errors():
        result = train_and_evaluate(options, eval_processbench or [])
    if not result.main_process:
        return
    typer.echo(
        f"trained on {result.examples} records ({result.too_long} left out as too long"
        + (f", {result.digit_check_copies} digit-check copies added" if result.digit_check_copies else "")
        + f") in {result.seconds:.0f} s; "
        f"loss {result.first_loss} -> {result.last_loss}; checkpoint: {out}"
    )


@eval_app.command("processbench")
def eval_processbench(
    data: Annotated[
        list[str],
        typer.Option(
            help="ProcessBench items: JSON array or JSONL files (subset = file stem), or the Hub dataset "
            "Qwen/ProcessBench (every split); repeat for several."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")],
    model: ModelOption = None,
    store: StoreOption = None,
    threshold: Annotated[float, typer.Option(min=0, max=1, help="A step below this score is a wrong step.")] = 0.5,
    search_threshold: Annotated[
        str | None,
        typer.Option(help="Pick the threshold with the best F1 on this subset, then apply it to every subset."),
    ] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-item predictions (JSONL) here.")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_batch_tokens: BatchTokensOption = None,
) -> None:
    """ProcessBench: F1 of identifying the earliest wrong step (or that none is wrong), per subset.

    The prediction is the first step scored below the threshold, else -1. Reported in percent, as the
    official script prints them: accuracy on erroneous items, on correct items, their harmonic mean F1,
    avg_f1 over subsets, and how often solutions with a right answer but a wrong step are flagged.
    """
    from service.jobs.evaluate.run import EvalModel, run_processbench

    with _input_errors():
        prm = EvalModel(model, store, device, dtype, max_batch_tokens)
        result = run_processbench(prm, data, out, threshold, search_threshold, predictions)
    _print_summary(result, ["threshold", "avg_f1"])
    for name, metrics in result["subsets"].items():
        typer.echo(f"  {name}: " + ", ".join(f"{key} {_fmt(value)}" for key, value in metrics.items()))


@eval_app.command("bon")
def eval_bon(
    data: Annotated[
        str,
        typer.Option(
            help="Candidates with known correctness: the Qwen2.5-Math best-of-N test-bed JSONL (question, "
            "gt, code, pred, score) or `prm generate` output."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the JSON report (plots go beside it).")],
    model: ModelOption = None,
    store: StoreOption = None,
    plots: Annotated[Path | None, typer.Option(help="Directory for the PNG plots (default: beside --out).")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_batch_tokens: BatchTokensOption = None,
) -> None:
    """Best-of-N: accuracy of the candidate the PRM ranks first, per aggregation of its step scores.

    Reports prm@N for product, min, last and mean beside maj@N, pass@N and pass@1, the share of
    responses whose lowest step score is their last step (a sign of a PRM judging outcomes), and
    two PNG plots.
    """
    from service.jobs.evaluate.run import EvalModel, run_bon

    with _input_errors():
        result = run_bon(EvalModel(model, store, device, dtype, max_batch_tokens), data, out, plots)
    _print_summary(result, ["n", "problems", "maj", "pass", "pass@1", "min_at_last_step"])
    typer.echo("  prm@N: " + ", ".join(f"{how} {_fmt(value)}" for how, value in result["prm"].items()))


def publish(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory, e.g. the --out of `prm train`.")],
    name: Annotated[str, typer.Option(help="The model's name in the store (letters, digits, '.', '_', '-').")],
    store: Annotated[str, typer.Option(envvar="PRM_STORE", help="The model store directory.")] = str(DEFAULT_STORE),
    default: Annotated[bool, typer.Option(help="Also make NAME the store's default model.")] = False,
) -> None:
    """Copy a checkpoint into the store as NAME's next version, atomically, and print that version.

    A running `prm serve --model NAME` picks it up on POST /admin/reload, or by itself with --watch.
    """
    model_store = ModelStore(store)
    with _input_errors():
        stored = model_store.publish(checkpoint, name)
        if default:
            model_store.set_default(name)
    typer.echo(stored.version)


@contextmanager
def _input_errors() -> Iterator[None]:
    """Turn the jobs' input errors (a bad record, file, checkpoint or store name) into one line and exit 2."""
    from service.jobs.evaluate.scoring import EncodeError
    from service.jobs.records import InputError
    from service.jobs.train.backbone import BaseModelError
    from service.jobs.train.data import RecordError
    from service.prm.checkpoint import CheckpointError

    try:
        yield
    except (InputError, RecordError, EncodeError, BaseModelError, CheckpointError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


def _print_summary(result: dict, keys: list[str]) -> None:
    typer.echo(f"{result['model']}@{result['model_version']}: " + ", ".join(f"{k} {_fmt(result[k])}" for k in keys))


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else json.dumps(value)
