"""Run a training job: records -> examples -> transformers' Trainer -> a servable checkpoint + prm.json.

The Trainer brings checkpointing, resume, mixed precision and several processes (`accelerate launch` /
`torchrun`: data parallel, FSDP or DeepSpeed), so this module only wires data, model and output layout.
The output directory has exactly the Qwen2.5-Math-PRM-7B layout; Trainer checkpoints go to
`<out>/checkpoints/`, which `prm publish` leaves behind.

Rank discipline: every process trains and takes part in saving (FSDP gathers the full weights then);
only the main process writes or reads the output directory after that (tokenizer, config fix-ups,
dtype, evaluation, prm.json), and the others wait at a barrier until the checkpoint is complete.
"""

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase, SchedulerType, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from service import __version__
from service.jobs.inputs import InputError, read_records
from service.jobs.train.backbone import corpus_of, output_config_fixups, prepare
from service.jobs.train.data import Encoded, StepwiseDataset, collate, encode_records, parse_records
from service.jobs.train.options import SCRATCH, TrainOptions
from service.prm.checkpoint import MANIFEST
from service.prm.formatting import PRMFormatter

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TrainResult:
    out: Path
    examples: int  # records trained on
    too_long: int
    digit_check_copies: int
    first_loss: float | None
    last_loss: float | None
    seconds: float
    main_process: bool  # rank 0 (or the only process): the one that writes files


def train(options: TrainOptions) -> TrainResult:
    started = time.monotonic()
    trainer, encoded, tokenizer = build_trainer(options)
    checkpoints = options.out / CHECKPOINTS
    last = get_last_checkpoint(str(checkpoints)) if options.resume and checkpoints.is_dir() else None
    if last:
        log.info("continuing from %s", last)
    trainer.train(resume_from_checkpoint=last)

    trainer.save_model(str(options.out))  # on every rank: under FSDP it gathers the full, unsharded weights
    if trainer.is_world_process_zero():
        (options.out / "training_args.bin").unlink(missing_ok=True)  # a pickle: checkpoints/ keeps it for resume
        tokenizer.save_pretrained(options.out)
        output_config_fixups(options.out)
        cast_weights(options.out, SAVE_DTYPES[options.save_dtype])
    trainer.accelerator.wait_for_everyone()  # no rank exits before the checkpoint is complete
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainResult(
        options.out,
        len(encoded.examples) - encoded.digit_check_copies,
        encoded.too_long,
        encoded.digit_check_copies,
        losses[0] if losses else None,
        losses[-1] if losses else None,
        time.monotonic() - started,
        trainer.is_world_process_zero(),
    )


def build_trainer(options: TrainOptions) -> tuple[Trainer, Encoded, PreTrainedTokenizerBase]:
    """Records -> checked examples -> a model, its tokenizer and a Trainer ready to run."""
    schedules = [schedule.value for schedule in SchedulerType]
    if options.lr_scheduler not in schedules:
        raise InputError(f"--lr-scheduler {options.lr_scheduler!r} is not one of {', '.join(schedules)}")
    if options.save_dtype not in SAVE_DTYPES:
        raise InputError(f"--save-dtype {options.save_dtype!r} is not one of {', '.join(SAVE_DTYPES)}")
    if options.fsdp and not torch.cuda.is_available():
        raise InputError(
            "--fsdp needs CUDA GPUs: accelerate, which the Trainer shards with, runs FSDP only on GPUs; on CPU, "
            "run the same command without --fsdp (plain data parallel)"
        )
    records = parse_records([record for source in options.data for record in read_records(source)])
    if not records:
        raise InputError("the training data has no records")
    model, tokenizer = prepare(options.base, corpus_of(records), options.scratch, options.seed)
    formatter = PRMFormatter(tokenizer, max_length=options.max_length or model.config.max_position_embeddings)
    encoded = encode_records(records, formatter, options.digit_check, options.seed)
    if encoded.too_long:
        log.warning("left out %d records longer than %d tokens", encoded.too_long, formatter.max_length)
    if not encoded.examples:
        raise InputError(f"every record is longer than {formatter.max_length} tokens; raise --max-length")

    trainer = Trainer(
        model=model,
        args=_training_arguments(options, options.out / CHECKPOINTS),
        train_dataset=StepwiseDataset(encoded.examples, options.lm_loss, options.digit_check > 0),
        data_collator=collate(tokenizer.pad_token_id),
    )
    return trainer, encoded, tokenizer


def train_and_evaluate(options: TrainOptions, processbench_files: list[str]) -> TrainResult:
    """Train, then evaluate the saved checkpoint on ProcessBench files and write prm.json with the report."""
    base_manifest = read_base_manifest(options.base)  # before training: a bad one must not cost a run
    result = train(options)
    if not result.main_process:
        return result
    metrics = {}
    if processbench_files:
        from service.jobs.evaluate.run import ModelSpec, run_processbench

        report = run_processbench(ModelSpec(str(options.out)), processbench_files, options.out / "processbench.json")
        metrics["processbench"] = {key: report[key] for key in ("threshold", "subsets", "avg_f1")}
    write_manifest(options, result, metrics, base_manifest)
    return result


def _training_arguments(options: TrainOptions, checkpoints: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        learning_rate=options.lr,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        train_sampling_strategy="group_by_length" if options.group_by_length else "random",
        warmup_steps=options.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=options.weight_decay,
        lr_scheduler_type=options.lr_scheduler,
        bf16=options.bf16,
        activation_checkpointing=options.gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without it, torchrun on a machine without CUDA runs N independent single-process trainings.
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every parameter takes part in each forward: skip DDP's extra search
        fsdp=options.fsdp,
        deepspeed=options.deepspeed,
        logging_steps=options.logging_steps,
        save_steps=options.save_steps,
        save_total_limit=2,
        seed=options.seed,
        remove_unused_columns=False,
        report_to="none",
    )


def cast_weights(out: Path, dtype: torch.dtype) -> None:
    """Rewrite the saved weights in `dtype`, one safetensors file at a time (a 7B PRM: 15 GB in bfloat16,
    not the 30 GB of float32 master weights); config.json says the new dtype."""
    if dtype == torch.float32:
        return
    total_size = 0
    for path in sorted(out.glob("*.safetensors")):
        tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in load_file(path).items()}
        save_file(tensors, path, metadata={"format": "pt"})
        total_size += sum(t.numel() * t.element_size() for t in tensors.values())
    index = out / "model.safetensors.index.json"
    if index.is_file():  # sharded: the index states the total size
        entries = json.loads(index.read_text())
        entries.setdefault("metadata", {})["total_size"] = total_size
        index.write_text(json.dumps(entries, indent=2) + "\n")
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def write_manifest(
    options: TrainOptions, result: TrainResult, metrics: dict | None = None, base_manifest: dict | None = None
) -> Path:
    """prm.json: what the checkpoint was made from and how, so a published version explains itself."""
    hyperparameters = asdict(options)
    for key in ("base", "data", "out"):
        hyperparameters.pop(key)
    manifest = {
        "base": options.base if options.base == SCRATCH else str(options.base),
        "data": [_describe_data(source) for source in options.data],
        "hyperparameters": hyperparameters,
        "training": {
            "examples": result.examples,
            "left_out_too_long": result.too_long,
            "digit_check_copies": result.digit_check_copies,
            "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "seconds": round(result.seconds, 1),
        },
        "metrics": metrics or {},
        "prm_service_version": __version__,
    }
    if base_manifest is not None:
        manifest["base_manifest"] = base_manifest
    path = options.out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_base_manifest(base: str) -> dict | None:
    """The prm.json of the PRM a run continues, kept in the new one: a build in stages (like the demo's)
    explains every stage. None when the base has none."""
    path = Path(base) / MANIFEST
    if base == SCRATCH or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error}); fix or remove it to continue this PRM") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: not a JSON object; fix or remove it to continue this PRM")
    return manifest


def _describe_data(source: str) -> dict:
    path = Path(source)
    if not path.is_file():
        return {"dataset": source}
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
