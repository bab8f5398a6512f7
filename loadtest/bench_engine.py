"""Engine-only throughput (no HTTP): how a batch of PRM requests is best turned into scores.

Compares, on the same items and checkpoint, in one run:
  one-at-a-time   one forward per request, as the model card does
  padded          HF forward on padded batches in arrival order, SDPA with a padding mask
  packed@B        the service's padding-free packed forward, batches of at most B tokens

and checks that every way gives the same scores. Prints tokens/s (median of --repeats)
and the ratio to one-at-a-time. Used to pick the default --max-batch-tokens per device.

    python loadtest/bench_engine.py                        # tiny model on CPU
    python loadtest/bench_engine.py --budgets 1024 2048 4096 8192
"""

import argparse

import torch
from common import add_items_arguments, encoded_items, median_seconds

from service.engine.batching import take_batch
from service.prm.formatting import EncodedItem
from service.prm.loading import load_prm
from service.prm.scorer import PackedScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_items_arguments(parser, items=96)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--padded-budget", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    prm = load_prm(str(args.model), device=args.device, dtype=args.dtype)
    items = encoded_items(prm, args)
    tokens = sum(len(item) for item in items)
    scorer = PackedScorer(prm)

    ways = {"one-at-a-time": lambda: [scorer.score([item]).scores[0] for item in items]}
    ways["padded"] = lambda: padded_scores(prm, items, args.padded_budget)
    for budget in args.budgets:
        ways[f"packed@{budget}"] = lambda budget=budget: packed_scores(scorer, items, budget)

    reference = ways["one-at-a-time"]()
    print(f"{len(items)} items, {tokens} tokens, {prm.device} {prm.dtype}, torch threads {torch.get_num_threads()}")
    print(f"{'way':16s} {'tokens/s':>10s} {'vs one-at-a-time':>17s} {'max |diff|':>11s}")
    baseline = None
    for name, run in ways.items():
        scores = run()
        pairs = zip(scores, reference, strict=True)
        diff = max(abs(a - b) for got, want in pairs for a, b in zip(got, want, strict=True))
        seconds = median_seconds(run, args.repeats)
        rate = tokens / seconds
        baseline = baseline or rate
        print(f"{name:16s} {rate:10.0f} {rate / baseline:16.2f}x {diff:11.1e}", flush=True)


def packed_scores(scorer: PackedScorer, items: list[EncodedItem], budget: int) -> list[list[float]]:
    from collections import deque

    queue, scores = deque(items), []
    while queue:
        scores.extend(scorer.score(take_batch(queue, budget)).scores)
    return scores


@torch.inference_mode()
def padded_scores(prm, items: list[EncodedItem], budget: int) -> list[list[float]]:
    """Arrival-order batches whose padded size (rows x longest) fits the budget, right-padded, SDPA."""
    model = prm.model
    scores, start = [], 0
    while start < len(items):
        end = start + 1
        while end < len(items) and (end + 1 - start) * max(len(i) for i in items[start : end + 1]) <= budget:
            end += 1
        batch = items[start:end]
        width = max(len(item) for item in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, item in enumerate(batch):
            ids[row, : len(item)] = torch.tensor(item.input_ids)
            mask[row, : len(item)] = 1
        hidden = model.model(input_ids=ids.to(prm.device), attention_mask=mask.to(prm.device)).last_hidden_state
        for row, item in enumerate(batch):
            at = hidden[row, item.separator_positions].float()
            scores.append(torch.softmax(model.score(at), dim=-1)[:, 1].cpu().tolist())
        start = end
    return scores


if __name__ == "__main__":
    main()
