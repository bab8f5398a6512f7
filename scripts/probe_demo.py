"""Where a demo PRM's verdicts come from, per arithmetic operation, on `prm synth` ProcessBench items.

    python scripts/probe_demo.py MODEL HELDOUT.jsonl [--threshold 0.5]

Prints, for each operation (+, -, x, /) of the step a solution got wrong:
- how often the first error is found, per error kind, at the threshold (as `prm eval processbench` counts);
- AUC of the step scores, wrong results (calculation and slip) against right steps: 0.5 is blind;
- the scores of one hand-made solution whose first step, an addition, is right or off by 2, 10 and 40;
- next-token accuracy on each digit of every result in the correct solutions, read where `prm train --lm-loss`
  reads it, so one can tell whether the model does not know the arithmetic or knows it and does not use it;
- with one result's last digit of each correct solution replaced (as `prm train --digit-check` does), per
  operation: AUC of the score at that digit and at its step's separator, each against the same position of
  the solution as written, so one can tell whether a wrong result is spotted where it is written and whether
  the step's score then uses it.

A diagnostic for the synthetic world only: it parses `prm synth`'s step wording (`a + b = c`).
"""

import argparse
import re
from collections import defaultdict
from itertools import pairwise

import torch

from service.jobs.evaluate.processbench import as_scoring_input, first_below, load_subsets
from service.jobs.evaluate.run import ModelSpec
from service.jobs.evaluate.scoring import score_items
from service.jobs.train.data import encode_records, parse_records
from service.jobs.train.objective import IGNORE_INDEX, Qwen2PRMForTraining
from service.prm.formatting import ScoringInput

COMPUTATION = re.compile(r"(\d+) ([-+×÷]) (\d+) = (\d+)")


def operation(step: str) -> str | None:
    match = COMPUTATION.search(step)
    return match.group(2) if match else None


def detection(items: list[dict], scores: list[list[float]], threshold: float) -> dict:
    found = defaultdict(lambda: [0, 0])
    for item, step_scores in zip(items, scores, strict=True):
        if item["label"] != -1:
            counts = found[(item["generator"].removeprefix("synth-"), operation(item["steps"][item["label"]]))]
            counts[0] += first_below(step_scores, threshold) == item["label"]
            counts[1] += 1
    return found


def score_auc(items: list[dict], scores: list[list[float]]) -> dict:
    right, wrong = defaultdict(list), defaultdict(list)
    for item, step_scores in zip(items, scores, strict=True):
        label, kind = item["label"], item["generator"].removeprefix("synth-")
        for index, (step, score) in enumerate(zip(item["steps"], step_scores, strict=True)):
            if (op := operation(step)) is None:
                continue
            if label == -1 or index < label:
                right[op].append(score)
            elif index == label and kind in ("calculation", "slip"):
                wrong[op].append(score)
    return {op: _auc(right[op], wrong[op]) for op in right if wrong[op]}


def _auc(positives: list[float], negatives: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def addition_sensitivity(prm) -> dict[int, list[float]]:
    """Step scores with the first step's sum written as each result (44 is right); the error carries on."""
    problem = (
        "Sam has 34 shells. Then Sam wins 10 more shells. Then Sam doubles the number of shells. "
        "How many shells does Sam have now?"
    )
    solutions = {
        result: ScoringInput(
            problem=problem,
            steps=[
                f"After winning 10 more, Sam has 34 + 10 = {result} shells.",
                f"Doubling them, Sam has {result} × 2 = {2 * result} shells.",
                f"The answer is \\boxed{{{2 * result}}}.",
            ],
        )
        for result in (44, 46, 54, 84)
    }
    scores = score_items(prm, [(str(result), item) for result, item in solutions.items()], desc="hand-made")
    return dict(zip(solutions, scores, strict=True))


@torch.inference_mode()
def result_digit_accuracy(prm, model: Qwen2PRMForTraining, items: list[dict]) -> dict:
    """Teacher-forced next-token accuracy on the digits after each `=` of the correct solutions."""
    tokenizer = prm.formatter.tokenizer
    equals = tokenizer.convert_tokens_to_ids("Ġ=")
    digits = set(tokenizer.convert_tokens_to_ids([str(d) for d in range(10)]))
    hits = defaultdict(lambda: [0, 0])
    for item in items:
        if item["label"] != -1:
            continue
        ids = prm.formatter.encode(as_scoring_input(item)).input_ids
        predicted = model.next_token_logits(torch.tensor([ids]))[0].argmax(-1).tolist()
        ops = filter(None, map(operation, item["steps"]))  # one per "=", in order
        for position, token in enumerate(ids):
            if token != equals:
                continue
            op, at, place = next(ops), position + 2, 0  # "= " is followed by a space token, then the digits
            while ids[at] in digits:
                hits[(op, place)][0] += predicted[at - 1] == ids[at]
                hits[(op, place)][1] += 1
                at, place = at + 1, place + 1
    return hits


@torch.inference_mode()
def replaced_digit_auc(prm, model: Qwen2PRMForTraining, items: list[dict]) -> dict:
    """Per operation: AUCs of the score at a replaced last digit of a result (one per correct solution, as
    `prm train --digit-check` replaces it) and at its step's separator, each against the same position of
    the solution as written. Compared at the same position, so that a place where the model is unsure of
    every solution does not pass for one where it spots the wrong one."""
    records = [
        {
            "id": item["id"],
            "prompt": item["problem"],
            "completions": item["steps"],
            "labels": [True] * len(item["steps"]),
        }
        for item in items
        if item["label"] == -1
    ]
    examples = encode_records(parse_records(records), prm.formatter, digit_check=1.0).examples
    at_digit, at_separator = defaultdict(lambda: ([], [])), defaultdict(lambda: ([], []))
    for original, copy in _originals_and_copies(examples):
        replaced, separator = copy.check_labels.index(0), copy.labels.index(0)
        start = max([p + 1 for p, label in enumerate(copy.labels[:separator]) if label != IGNORE_INDEX], default=0)
        op = operation(prm.formatter.tokenizer.decode(copy.input_ids[start:separator]))
        for example, side in ((original, 0), (copy, 1)):
            scores = torch.softmax(model(torch.tensor([example.input_ids])).logits[0], -1)[:, 1]
            at_digit[op][side].append(scores[replaced].item())
            at_separator[op][side].append(scores[separator].item())
    return {op: (len(at_digit[op][1]), _auc(*at_digit[op]), _auc(*at_separator[op])) for op in at_digit}


def _originals_and_copies(examples: list):
    """`encode_records` puts each record's digit-check copy right after it; records with no result have none."""
    for original, copy in pairwise(examples):
        if 0 not in original.check_labels and 0 in copy.check_labels:
            yield original, copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("heldout")
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    (items,) = load_subsets([args.heldout]).values()
    prm = ModelSpec(args.model, device="cpu").load()
    unpacked = Qwen2PRMForTraining.from_pretrained(prm.path).eval()  # the served one attends packed batches
    scores = score_items(prm, [(item["id"], as_scoring_input(item)) for item in items], desc="scoring")

    print(f"first error found at threshold {args.threshold} (found / items)")
    for (kind, op), (hit, total) in sorted(detection(items, scores, args.threshold).items(), key=str):
        print(f"  {kind:12} {op}  {hit:4} / {total:<4} {100 * hit / total:5.1f}%")
    print("AUC of step scores, wrong results against right steps")
    for op, value in sorted(score_auc(items, scores).items()):
        print(f"  {op}  {value:.3f}")
    print("one solution, its first step's sum written as ... (44 is right): step scores")
    for result, step_scores in addition_sensitivity(prm).items():
        print(f"  34 + 10 = {result}: " + " ".join(f"{score:.3f}" for score in step_scores))
    print("next-token accuracy on result digits of correct solutions (place 0 = the leading digit)")
    for (op, place), (hit, total) in sorted(result_digit_accuracy(prm, unpacked, items).items()):
        print(f"  {op} place {place}  {hit:4} / {total:<4} {100 * hit / total:5.1f}%")
    print("one result's last digit of each correct solution replaced: AUC of the score there and at its separator")
    for op, (total, digit, step) in sorted(replaced_digit_auc(prm, unpacked, items).items()):
        print(f"  {op}  {total:4}  at the digit {digit:.3f}  at the separator {step:.3f}")


if __name__ == "__main__":
    main()
