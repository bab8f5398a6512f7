"""Checkpoints the tests and benchmarks build: random weights, exactly the files a Hub checkpoint has.

No download, yet the Qwen2.5-Math-PRM-7B layout down to its remote-code files, which here raise if
anything executes them (prm-service must never): tiny on CPU, 7B-shaped on a GPU box.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from service.jobs.train.scratch import padded_vocab_size, small_qwen2_config, train_tokenizer
from service.prm.checkpoint import ARCHITECTURE
from service.prm.model import Qwen2ForProcessRewardModel

REMOTE_CODE_FILES = ("modeling_qwen2_rm.py", "configuration_qwen2_rm.py")
REMOTE_CODE = 'raise RuntimeError("remote checkpoint code was executed; prm-service must never do that")\n'


def build_random_checkpoint(
    out_dir: Path,
    corpus: list[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    tokenizer_vocab_size: int = 512,
    vocab_size: int | None = None,
    shards: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    init_std: float = 0.2,
    device: str = "cpu",
) -> Path:
    """Write tokenizer, config, sharded safetensors and remote-code decoys into `out_dir`.

    `vocab_size` defaults to the tokenizer's size rounded up (the real checkpoint also has spare rows);
    `device` is where the random weights are drawn: "cuda" makes a 7B-shaped model in seconds.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, tokenizer_vocab_size)
    tokenizer.save_pretrained(out_dir)
    _match_hub_tokenizer_config(out_dir)

    config = {
        "architectures": [ARCHITECTURE],
        "auto_map": {
            "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
            "AutoModel": f"modeling_qwen2_rm.{ARCHITECTURE}",
        },
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": num_layers,
        "model_type": "qwen2",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "sliding_window": max_position_embeddings,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.40.1",
        "use_cache": True,
        "use_sliding_window": False,
        # As in the real checkpoint, the embedding has spare rows past the tokenizer's ids.
        "vocab_size": vocab_size or padded_vocab_size(tokenizer),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    torch.manual_seed(seed)
    # A wider init than the real 0.02 makes every layer matter, so scores depend on the context.
    with torch.device(device):
        model = Qwen2ForProcessRewardModel(Qwen2Config(**{**config, "initializer_range": init_std}))
    with torch.no_grad():  # a wider head spreads random scores over (0, 1), so comparisons mean something
        for layer in (model.score[0], model.score[2]):
            layer.weight.normal_(0.0, 1.0 / hidden_size**0.5)
            layer.bias.zero_()
    state = {name: tensor.to("cpu", dtype).contiguous() for name, tensor in model.state_dict().items()}
    del model
    _save_sharded(state, out_dir, shards)

    for name in REMOTE_CODE_FILES:
        (out_dir / name).write_text(REMOTE_CODE)
    return out_dir


def build_random_causal_lm(
    out_dir: Path,
    corpus: list[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    tokenizer_vocab_size: int = 512,
    step_separator: bool = True,
    seed: int = 0,
) -> Path:
    """A tiny random Qwen2ForCausalLM with the same tokenizer and chat template: a policy or judge for the
    offline jobs' tests, or a `prm train --base` backbone (without `step_separator`, like a real policy's)."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus, tokenizer_vocab_size, step_separator)
    torch.manual_seed(seed)
    config = small_qwen2_config(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=4096,
    )
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _match_hub_tokenizer_config(out_dir)
    return out_dir


def _match_hub_tokenizer_config(out_dir: Path) -> None:
    """Name the tokenizer class and keep the chat template inside tokenizer_config.json, as the Hub files do."""
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config["chat_template"] = (out_dir / "chat_template.jinja").read_text()
    (out_dir / "chat_template.jinja").unlink()
    path.write_text(json.dumps(config, indent=2) + "\n")


def _save_sharded(state: dict[str, torch.Tensor], out_dir: Path, shards: int) -> None:
    names = sorted(state)
    if shards == 1:
        save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map: dict[str, str] = {}
    per_shard = -(-len(names) // shards)
    for index in range(shards):
        file_name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: state[name] for name in names[index * per_shard : (index + 1) * per_shard]}
        save_file(part, out_dir / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file_name))
    total_size = sum(t.numel() * t.element_size() for t in state.values())
    index_json = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")


SMOKE_TEST_CORPUS = [
    "What is 2+3*4? First, 3*4 = 12. Then 2+12 = 14. The answer is \\boxed{14}.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? 48/2 = 24 and 48+24 = 72.",
    "Let x be the number of apples. Then 3x + 5 = 20, so 3x = 15 and x = 5.",
]
