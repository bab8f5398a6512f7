"""The model `prm train` starts from: a PRM to continue, a causal LM to give a PRM head, or a fresh one.

- an existing `Qwen2ForProcessRewardModel` checkpoint continues training as it is;
- a Qwen2 causal LM (e.g. Qwen2.5-Math-7B-Instruct) keeps its backbone, drops its LM head and gets a
  freshly initialised PRM head (Linear(H, H), ReLU, Linear(H, 2));
- `scratch` builds a small Qwen2 from a config and a byte-level BPE tokenizer trained on the data
  (digits split one by one), which is how the bundled demo PRM is made.

The tokenizer always ends up with the `<extra_0>` step separator and a chat template.
"""

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from service.jobs.inputs import InputError
from service.jobs.train.data import Labelled
from service.jobs.train.objective import Qwen2PRMForTraining
from service.jobs.train.options import SCRATCH, ScratchShape
from service.jobs.train.scratch import CHAT_TEMPLATE, small_qwen2_config, train_tokenizer
from service.prm.checkpoint import ARCHITECTURE, resolve_checkpoint
from service.prm.formatting import DEFAULT_SYSTEM, STEP_SEPARATOR


class BaseModelError(InputError):
    """The base checkpoint cannot become a Qwen2 PRM; the message says why."""


def prepare(base: str, corpus: list[str], shape: ScratchShape, seed: int):
    """(model in float32, tokenizer) ready for training."""
    torch.manual_seed(seed)
    if base == SCRATCH:
        return _from_scratch(corpus, shape)
    path, _, _ = resolve_checkpoint(base)
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "qwen2":
        raise BaseModelError(f"{base} is a {config.get('model_type')!r} model; prm train starts from Qwen2 models")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = Qwen2PRMForTraining.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True, local_files_only=True, attn_implementation="sdpa"
    )
    _ensure_separator(tokenizer, model)
    return model, tokenizer


def _from_scratch(corpus: list[str], shape: ScratchShape):
    tokenizer = train_tokenizer(corpus, shape.vocab_size)
    config = small_qwen2_config(
        tokenizer,
        hidden_size=shape.hidden_size,
        num_layers=shape.layers,
        num_heads=shape.heads,
        num_kv_heads=shape.kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_length,
        attn_implementation="sdpa",
    )
    return Qwen2PRMForTraining(config), tokenizer


def _ensure_separator(tokenizer: PreTrainedTokenizerBase, model: Qwen2PRMForTraining) -> None:
    """Add `<extra_0>` (and a ChatML template) where a causal LM's tokenizer lacks them."""
    if tokenizer.convert_tokens_to_ids(STEP_SEPARATOR) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens([STEP_SEPARATOR], special_tokens=True)
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def corpus_of(records: list[Labelled]) -> list[str]:
    """The texts a scratch tokenizer learns from: problems, steps, and the system prompt and chat roles
    every conversation carries (repeated as often as they occur, so they become few tokens)."""
    texts = [record.item.problem for record in records] + [step for record in records for step in record.item.steps]
    return texts + [f"system {DEFAULT_SYSTEM} user assistant"] * len(records)


def output_config_fixups(out_dir: Path) -> None:
    """Name the PRM architecture and drop remote-code pointers, so vLLM and `prm serve` load the output."""
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = [ARCHITECTURE]  # the training subclass saves under its own name
    config.pop("auto_map", None)
    path.write_text(json.dumps(config, indent=2) + "\n")
