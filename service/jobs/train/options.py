"""`prm train`'s options and their defaults, in one place: the command line reads its defaults from here.

No torch here, so `prm --help` stays quick.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SCRATCH = "scratch"  # --base value: a new small model and a tokenizer trained on the data
SaveDtype = Literal["float32", "bfloat16"]  # of the weights `prm train` writes


@dataclass(frozen=True)
class ScratchShape:
    """The size of a model trained from scratch: by default the demo PRM's, narrow and deep, which learns
    arithmetic in far fewer steps than a wider, shallower model as fast per step (README, the demo PRM)."""

    hidden_size: int = 64
    layers: int = 8
    heads: int = 4
    kv_heads: int = 4
    intermediate_size: int = 192
    vocab_size: int = 512
    max_length: int = 1024


@dataclass
class TrainOptions:
    base: str
    data: list[str]
    out: Path
    epochs: float = 1.0
    max_steps: int = -1
    lr: float = 1e-5
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int | None = None
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    lm_loss: bool = False
    digit_check: float = 0.0
    group_by_length: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    fsdp: str = ""
    deepspeed: str | None = None
    save_dtype: SaveDtype = "float32"  # of the weights written to `out` (checkpoints/ keep the training state as is)
    logging_steps: int = 10
    save_steps: int = 500
    seed: int = 0
    resume: bool = True
    scratch: ScratchShape = field(default_factory=ScratchShape)
