"""Tokenising requests: the tokenizer on the whole rendered conversation against service.prm.pieces.

In one run, interleaved rounds over the same requests, each way timed on the event loop's work per request
(`whole`: render, then the tokenizer; `pieces`: the formatter's encode as it serves, its input checks
included): step-search walks (each ProcessBench MATH solution as steps[:1], steps[:2], ...) and
unique items (each solution once). Ids are checked to be identical first. Prints ms per request (median
over rounds) and the ratio whole / pieces (median of per-round ratios).

    python loadtest/bench_tokenize.py                 # the benchmarks' checkpoint (bench_http.py builds it)
    python loadtest/bench_tokenize.py --rounds 9
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from common import ROOT

from service.prm.formatting import PRMFormatter, ScoringInput
from service.prm.loading import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(__file__).parent / "out/bench-prm-h256-l4")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/processbench/math.json")
    parser.add_argument("--solutions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    solutions = json.loads(args.data.read_text())[: args.solutions]
    workloads = {
        "walks": [ScoringInput(s["problem"], s["steps"][:k]) for s in solutions for k in range(1, len(s["steps"]) + 1)],
        "unique": [ScoringInput(s["problem"], s["steps"]) for s in solutions],
    }
    tokenizer = load_tokenizer(str(args.model)).formatter.tokenizer

    def whole(formatter: PRMFormatter, item: ScoringInput) -> list[int]:
        return tokenizer(formatter.render(item))["input_ids"]

    def pieces(formatter: PRMFormatter, item: ScoringInput) -> list[int]:
        return formatter.encode(item).input_ids

    ways = {"whole": whole, "pieces": pieces}
    for items in workloads.values():
        formatter = PRMFormatter(tokenizer, max_length=1 << 20)
        assert all(whole(formatter, item) == pieces(formatter, item) for item in items)
    print(f"ids identical on {sum(map(len, workloads.values()))} requests")

    per_request = {(way, name): [] for way in ways for name in workloads}
    for number in range(args.rounds):
        for name, items in workloads.items():
            for way in ways if number % 2 == 0 else reversed(ways):
                formatter = PRMFormatter(tokenizer, max_length=1 << 20)  # nothing remembered from a round before
                started = time.perf_counter()
                for item in items:
                    ways[way](formatter, item)
                per_request[way, name].append((time.perf_counter() - started) / len(items) * 1e3)
    print("\n| requests | whole ms | pieces ms | whole / pieces |\n|---|---|---|---|")
    for name, items in workloads.items():
        whole_ms, pieces_ms = per_request["whole", name], per_request["pieces", name]
        ratio = statistics.median(a / b for a, b in zip(whole_ms, pieces_ms, strict=True))
        print(
            f"| {name} ({len(items)}) | {statistics.median(whole_ms):.3f} | {statistics.median(pieces_ms):.3f} "
            f"| **{ratio:.2f}x** |"
        )


if __name__ == "__main__":
    main()
