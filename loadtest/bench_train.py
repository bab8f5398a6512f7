"""Does `prm train --group-by-length` train faster than shuffled batches, and by how much?

Both runs train the demo PRM's shape (`--base scratch`, `--lm-loss`) on the same synthetic records
for the same number of steps, one after the other in this process; the table gives the median
seconds per optimizer step after a warm-up and the share of each batch that is padding.

    python loadtest/bench_train.py [--records 20000] [--steps 150] [--batch-size 16]
"""

import argparse
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

from transformers import TrainerCallback

from service.jobs.synth import synthesize
from service.jobs.train.run import TrainOptions, build_trainer

WARMUP_STEPS = 10


class StepClock(TrainerCallback):
    """Seconds per optimizer step, data loading included."""

    def __init__(self):
        self.seconds: list[float] = []
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def measure(data: Path, out: Path, steps: int, batch_size: int, group_by_length: bool) -> tuple[float, float]:
    options = TrainOptions(
        base="scratch", data=[str(data)], out=out, max_steps=steps, lr=1e-3, batch_size=batch_size,
        lm_loss=True, group_by_length=group_by_length, logging_steps=steps, save_steps=10 * steps, resume=False,
    )  # fmt: skip
    trainer, _, _ = build_trainer(options)
    masks = [batch["attention_mask"] for batch in islice(trainer.get_train_dataloader(), steps)]
    padding = 1 - sum(int(mask.sum()) for mask in masks) / sum(mask.numel() for mask in masks)
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    return statistics.median(clock.seconds[WARMUP_STEPS:]), padding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        data = synthesize(Path(work), train=args.records, heldout=0, bon_problems=0, bon_n=1, seed=0)["train"]
        results = {
            name: measure(data, Path(work) / name, args.steps, args.batch_size, grouped)
            for name, grouped in (("shuffled", False), ("group-by-length", True))
        }
    baseline = results["shuffled"][0]
    print(f"{'batching':<18}{'s/step (median)':>17}{'padding':>10}{'speed-up':>10}")
    for name, (seconds, padding) in results.items():
        print(f"{name:<18}{seconds:>17.3f}{padding:>10.0%}{baseline / seconds:>9.2f}x")


if __name__ == "__main__":
    main()
