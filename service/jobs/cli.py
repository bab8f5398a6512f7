"""`prm synth`, `prm train`, `prm eval processbench|bon` and `prm publish`: the model half of the refresh loop."""

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli_common import (
    BatchTokensOption,
    DeviceOption,
    DtypeOption,
    LogLevelOption,
    ModelOption,
    StoreOption,
    input_errors,
)
from service.config import ServeConfig
from service.jobs.train.options import SCRATCH, SaveDtype, ScratchShape, TrainOptions
from service.logs import configure_logging, process_rank
from service.store import DEFAULT_STORE, ModelStore

eval_app = typer.Typer(
    help="Measure a PRM the way the paper does: ProcessBench earliest-error F1, and best-of-N reranking.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


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
            f"'{SCRATCH}' (a new small model and a tokenizer trained on the data; see the --scratch-* options)."
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
    epochs: Annotated[float, typer.Option(min=0, help="Passes over the data.")] = TrainOptions.epochs,
    max_steps: Annotated[
        int, typer.Option(help="Stop after this many optimizer steps (-1: use --epochs).")
    ] = TrainOptions.max_steps,
    lr: Annotated[float, typer.Option(min=0, help="Peak learning rate, reached after warm-up.")] = TrainOptions.lr,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per device per step.")] = TrainOptions.batch_size,
    grad_accum: Annotated[
        int, typer.Option(min=1, help="Steps to accumulate before an optimizer update.")
    ] = TrainOptions.grad_accum,
    max_length: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Longest conversation in tokens; longer records are left out and counted "
            "(default: the model's maximum).",
            show_default=False,
        ),
    ] = TrainOptions.max_length,
    warmup_ratio: Annotated[
        float, typer.Option(min=0, max=1, help="Share of steps for linear warm-up.")
    ] = TrainOptions.warmup_ratio,
    lr_scheduler: Annotated[
        str, typer.Option(help="Learning-rate schedule after warm-up: cosine, linear, constant_with_warmup, ...")
    ] = TrainOptions.lr_scheduler,
    weight_decay: Annotated[float, typer.Option(min=0, help="AdamW weight decay.")] = TrainOptions.weight_decay,
    lm_loss: Annotated[
        bool,
        typer.Option(
            help="Add an auxiliary next-token loss on the steps labelled right, through the input embeddings "
            "(nothing extra is saved): for small models trained from scratch, like the demo PRM."
        ),
    ] = TrainOptions.lm_loss,
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
    ] = TrainOptions.digit_check,
    group_by_length: Annotated[
        bool,
        typer.Option(
            help="Batch conversations of similar length together (shuffled in groups), so that less of each "
            "batch is padding: 1.4 times the steps per second for the demo PRM on CPU (loadtest/bench_train.py)."
        ),
    ] = TrainOptions.group_by_length,
    bf16: Annotated[bool, typer.Option(help="Mixed precision in bfloat16 (GPUs).")] = TrainOptions.bf16,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations to save memory.")
    ] = TrainOptions.gradient_checkpointing,
    fsdp: Annotated[
        str,
        typer.Option(help="Trainer FSDP mode, e.g. 'full_shard auto_wrap' (under torchrun, on CUDA GPUs)."),
    ] = TrainOptions.fsdp,
    deepspeed: Annotated[
        str | None, typer.Option(help="A DeepSpeed JSON config (under deepspeed/torchrun).")
    ] = TrainOptions.deepspeed,
    save_dtype: Annotated[
        SaveDtype,
        typer.Option(
            help="dtype of the weights written to OUT: bfloat16 halves a 7B PRM (about 15 GB, as the published "
            "Qwen2.5-Math-PRM-7B) where float32 keeps the master weights; checkpoints/ keep the training state."
        ),
    ] = TrainOptions.save_dtype,
    logging_steps: Annotated[
        int, typer.Option(min=1, help="Log the loss every this many steps.")
    ] = TrainOptions.logging_steps,
    save_steps: Annotated[
        int, typer.Option(min=1, help="Write a resumable checkpoint every this many steps.")
    ] = TrainOptions.save_steps,
    seed: Annotated[int, typer.Option(help="Random seed (data order and new weights).")] = TrainOptions.seed,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in OUT/checkpoints.")
    ] = TrainOptions.resume,
    eval_processbench: Annotated[
        list[str] | None,
        typer.Option(help="ProcessBench files to evaluate the result on; the report goes into prm.json."),
    ] = None,
    scratch_hidden_size: Annotated[
        int, typer.Option(help="Hidden size of a scratch model.")
    ] = ScratchShape.hidden_size,
    scratch_layers: Annotated[int, typer.Option(help="Layers of a scratch model.")] = ScratchShape.layers,
    scratch_heads: Annotated[int, typer.Option(help="Attention heads of a scratch model.")] = ScratchShape.heads,
    scratch_kv_heads: Annotated[int, typer.Option(help="Key/value heads of a scratch model.")] = ScratchShape.kv_heads,
    scratch_intermediate_size: Annotated[
        int, typer.Option(help="MLP width of a scratch model.")
    ] = ScratchShape.intermediate_size,
    scratch_vocab_size: Annotated[
        int, typer.Option(help="Tokenizer vocabulary of a scratch model.")
    ] = ScratchShape.vocab_size,
    scratch_max_length: Annotated[
        int, typer.Option(help="Maximum positions of a scratch model.")
    ] = ScratchShape.max_length,
    log_level: LogLevelOption = ServeConfig.log_level,
) -> None:
    """Train a PRM on stepwise supervision: cross-entropy on the two head logits at step separators only.

    Conversations are formatted by the service's own formatter, so the model is trained on exactly
    what it will be served. The output directory has the Qwen2.5-Math-PRM-7B layout (prm serve and
    vLLM load it) plus prm.json; publish it with `prm publish OUT --name NAME`. Several processes:
    `torchrun --nproc-per-node 8 -m service train ... --deepspeed deploy/deepspeed/zero3.json` (or
    --fsdp 'full_shard auto_wrap' on CUDA GPUs); rank 0 writes the output.
    """
    values = dict(locals())  # the parameters: TrainOptions' fields, ScratchShape's as scratch_*, and two more
    shape = {name: values.pop(f"scratch_{name}") for name in ScratchShape.__dataclass_fields__}
    from service.jobs.train.run import train_and_evaluate

    main_process = process_rank() == 0  # under torchrun / accelerate launch, only rank 0 logs and prints
    log_level = values.pop("log_level")
    configure_logging(log_level if main_process else "error")
    processbench_files = values.pop("eval_processbench") or []
    options = TrainOptions(**values, scratch=ScratchShape(**shape))
    with input_errors():
        result = train_and_evaluate(options, processbench_files)
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
    model: ModelOption = ServeConfig.model,
    store: StoreOption = ServeConfig.store,
    threshold: Annotated[float, typer.Option(min=0, max=1, help="A step below this score is a wrong step.")] = 0.5,
    search_threshold: Annotated[
        str | None,
        typer.Option(help="Pick the threshold with the best F1 on this subset, then apply it to every subset."),
    ] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-item predictions (JSONL) here.")] = None,
    device: DeviceOption = ServeConfig.device,
    dtype: DtypeOption = ServeConfig.dtype,
    max_batch_tokens: BatchTokensOption = ServeConfig.max_batch_tokens,
) -> None:
    """ProcessBench: F1 of identifying the earliest wrong step (or that none is wrong), per subset.

    The prediction is the first step scored below the threshold, else -1. Reported in percent, as the
    official script prints them: accuracy on erroneous items, on correct items, their harmonic mean F1,
    avg_f1 over subsets, and how often solutions with a right answer but a wrong step are flagged.
    """
    from service.jobs.evaluate.run import ModelSpec, run_processbench

    with input_errors():
        prm = ModelSpec(model, store, device, dtype, max_batch_tokens)
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
    model: ModelOption = ServeConfig.model,
    store: StoreOption = ServeConfig.store,
    plots: Annotated[Path | None, typer.Option(help="Directory for the PNG plots (default: beside --out).")] = None,
    device: DeviceOption = ServeConfig.device,
    dtype: DtypeOption = ServeConfig.dtype,
    max_batch_tokens: BatchTokensOption = ServeConfig.max_batch_tokens,
) -> None:
    """Best-of-N: accuracy of the candidate the PRM ranks first, per aggregation of its step scores.

    Reports prm@N for product, min, last and mean beside maj@N, pass@N and pass@1, the share of
    responses whose lowest step score is their last step (a sign of a PRM judging outcomes), and
    two PNG plots.
    """
    from service.jobs.evaluate.run import ModelSpec, run_bon

    with input_errors():
        result = run_bon(ModelSpec(model, store, device, dtype, max_batch_tokens), data, out, plots)
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
    with input_errors():
        stored = model_store.publish(checkpoint, name)
        if default:
            model_store.set_default(name)
    typer.echo(stored.version)


def _print_summary(result: dict, keys: list[str]) -> None:
    typer.echo(f"{result['model']}@{result['model_version']}: " + ", ".join(f"{k} {_fmt(result[k])}" for k in keys))


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else json.dumps(value)
