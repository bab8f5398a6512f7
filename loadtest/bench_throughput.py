"""Throughput of the scoring engine, for a GPU box (and, with a tiny model, the CPU).

One run, no network: builds a random-weight checkpoint in the Qwen2.5-Math-PRM layout
(7B-shaped on CUDA, tiny on CPU), checks correctness first (packed and shared-prefix
scores against a plain per-sequence forward), then times, on the same synthetic
workloads:

  engine alone    one request at a time; HF padded batches of length-sorted requests;
                  packed batches (no sharing) at two budgets; shared vs unshared prefixes
  over HTTP       `prm serve` on the same checkpoint:
                  (a) RL: /score_steps batches of 64 rollouts of 200-2000 tokens
                  (b) best-of-N: /rerank, N=8 and N=64 (150-token problem, 500-token answers)
                  (c) step search: 16 next steps of ~100 tokens after a shared 1,500-token prefix
                  (d) single 1k-token requests on an idle server (latency)
  matmul peak     a large square matmul in the model's dtype

and prints one table with tokens/s, the share of the matmul peak, and the ratios the
targets in loadtest/README.md are about. "Effective" tokens/s count shared prefixes once
per sequence, i.e. the work an unshared engine would do.

    python loadtest/bench_throughput.py                       # CPU: tiny model, short runs
    python loadtest/bench_throughput.py --wheels .whl         # GPU host without fastapi/uvicorn
"""

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from common import median_seconds, start_prm_serve, wait_ready

HERE = Path(__file__).parent
SHAPES = {
    # Qwen2.5-Math-PRM-7B's shape, at its real init scale (a wider one overflows 28 bf16 layers).
    "7b": dict(
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        intermediate_size=18944,
        vocab_size=152064,
        init_std=0.02,
    ),
    "tiny": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["auto", *SHAPES], default="auto", help="auto: 7b on CUDA, tiny on CPU")
    parser.add_argument("--work", type=Path, default=HERE / "out")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per HTTP workload (default 20 GPU, 8 CPU)"
    )
    parser.add_argument("--wheels", type=Path, help="folder of wheels to install offline if the web stack is missing")
    parser.add_argument("--port", type=int, default=8103)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    install_missing(args.wheels)

    import torch

    from service.prm.loading import load_prm

    cuda = torch.cuda.is_available()
    shape = args.shape if args.shape != "auto" else ("7b" if cuda else "tiny")
    duration = args.duration or (20 if cuda else 8)
    checkpoint = build(args.work / f"throughput-prm-{shape}", shape, "cuda" if cuda else "cpu")
    prm = load_prm(str(checkpoint))
    print(
        f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, "
        f"{shape} model in {prm.dtype}",
        flush=True,
    )
    work = Workloads(prm, random.Random(0), scale=1 if cuda else 4)
    rows = []
    failures = check_correctness(prm, work)
    engine_rows(prm, work, rows, cuda)
    peak = matmul_peak(prm.dtype, cuda)
    if not args.skip_http:
        http_rows(checkpoint, work, rows, args.port, duration)
    report(rows, peak, flops_per_token(prm, work.rl_mean_length), failures, cuda)
    sys.exit(1 if failures else 0)


def install_missing(wheels: Path | None) -> None:
    """GPU hosts are often offline: take the web stack from a folder of wheels if it is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        if wheels is None:
            sys.exit("fastapi/uvicorn are missing: pass --wheels DIR with their wheels (see loadtest/README.md)")
        target = Path("/tmp/prm-site")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--target",
                str(target),
                *map(str, wheels.glob("*.whl")),
            ],
            check=True,
        )
        sys.path.insert(0, str(target))
        os.environ["PYTHONPATH"] = f"{target}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"


def build(path: Path, shape: str, device: str) -> Path:
    from tests.checkpoints import SMOKE_TEST_CORPUS, build_random_checkpoint

    if not (path / "config.json").exists():
        started = time.perf_counter()
        sizes = dict(SHAPES[shape])
        build_random_checkpoint(
            path, SMOKE_TEST_CORPUS + [DIGITS], device=device, shards=4 if shape == "7b" else 1, **sizes
        )
        print(f"built {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


DIGITS = "0123456789 0 1 2 3 4 5 6 7 8 9"


class Workloads:
    """Synthetic requests of exact token lengths (each digit is one token in these tokenizers).

    Every request is distinct, so concurrent requests share nothing but the system prompt.
    """

    def __init__(self, prm, rng: random.Random, scale: int):
        from service.prm.formatting import ScoringInput

        self.prm, self.rng, self.Input = prm, rng, ScoringInput
        self.rl = [
            [self.solution(rng.randint(100, 300) // scale, rng.randint(200, 2000) // scale) for _ in range(64)]
            for _ in range(8)
        ]
        self.rl_mean_length = statistics.mean(len(prm.formatter.encode(item)) for item in self.rl[0])
        self.bon8 = [self.shared_problem(150 // scale, 8, 500 // scale, steps=8) for _ in range(8)]
        self.bon64 = [self.shared_problem(150 // scale, 64, 500 // scale, steps=8) for _ in range(4)]
        self.search = [self.step_search(1500 // scale, 16, 100 // scale) for _ in range(8)]
        self.single = [self.solution(100 // scale, 1000 // scale) for _ in range(30)]

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(max(1, n)))

    def solution(self, problem_tokens: int, total_tokens: int, steps: int | None = None):
        steps = steps or self.rng.randint(2, 10)
        per_step = max(1, (total_tokens - problem_tokens) // steps)
        return self.Input(self.digits(problem_tokens), [self.digits(per_step) for _ in range(steps)])

    def shared_problem(self, problem_tokens: int, n: int, answer_tokens: int, steps: int):
        problem = self.digits(problem_tokens)
        return [self.Input(problem, [self.digits(answer_tokens // steps) for _ in range(steps)]) for _ in range(n)]

    def step_search(self, prefix_tokens: int, n: int, step_tokens: int):
        problem = self.digits(prefix_tokens // 3)
        partial = [self.digits(prefix_tokens // 6) for _ in range(4)]
        return [self.Input(problem, [*partial, self.digits(step_tokens)]) for _ in range(n)]

    def encode(self, items):
        return [self.prm.formatter.encode(item) for item in items]


def plain_forward(prm, item) -> list[float]:
    """The reference: one unpacked sequence through transformers' SDPA attention, as the model card runs it."""
    import torch

    model = prm.model
    with torch.inference_mode():
        ids = torch.tensor([item.input_ids], device=prm.device)
        hidden = model.model(input_ids=ids).last_hidden_state[0, item.separator_positions].float()
        return torch.softmax(model.score(hidden), dim=-1)[:, 1].cpu().tolist()


def check_correctness(prm, work) -> list[str]:
    from service.prm.scorer import PackedScorer

    tolerance = 1e-4 if prm.dtype.itemsize == 4 else 0.03
    failures = []
    for name, items in (("rl", work.rl[0][:8]), ("bon8", work.bon8[0]), ("search", work.search[0])):
        encoded = work.encode(items)
        reference = [plain_forward(prm, item) for item in encoded]
        for way, sharing in (("packed", 0), ("shared", 64)):
            got = PackedScorer(prm, sharing).score(encoded).scores
            diff = max(abs(a - b) for g, r in zip(got, reference, strict=True) for a, b in zip(g, r, strict=True))
            same_ranking = rank_by_product(got) == rank_by_product(reference)
            ok = diff <= tolerance  # rankings are reported: random weights can put candidates within noise
            print(
                f"correctness {name:6s} {way:6s}: max |diff| {diff:.1e} (tolerance {tolerance:g}), "
                f"same ranking: {same_ranking} -> {'ok' if ok else 'FAILED'}",
                flush=True,
            )
            if not ok:
                failures.append(f"{name}/{way}")
    return failures


def rank_by_product(scores: list[list[float]]) -> list[int]:
    from service.prm.aggregation import aggregate, rank

    return rank([aggregate(s, "product") for s in scores])


def engine_rows(prm, work, rows: list, cuda: bool) -> None:
    import torch

    from service.config import DEFAULT_BATCH_TOKENS
    from service.engine.batching import take_batch
    from service.prm.scorer import PackedScorer

    budget = DEFAULT_BATCH_TOKENS["cuda" if cuda else "cpu"]
    rl = work.encode(work.rl[0])
    rl_tokens = sum(len(item) for item in rl)

    def batches(items, tokens, sharing):
        scorer, queue, pending = PackedScorer(prm, sharing), deque(items), []
        while queue:
            pending.append(scorer.launch(take_batch(queue, tokens)))
        return [p() for p in pending]

    def padded_sorted(items, tokens):
        model = prm.model
        queue = deque(sorted(items, key=len))
        with torch.inference_mode():
            while queue:
                batch = [queue.popleft()]
                while queue and (len(batch) + 1) * len(queue[0]) <= tokens:
                    batch.append(queue.popleft())
                width = len(batch[-1])
                ids = torch.zeros(len(batch), width, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)
                for row, item in enumerate(batch):
                    ids[row, : len(item)] = torch.tensor(item.input_ids)
                    mask[row, : len(item)] = 1
                hidden = model.model(input_ids=ids.to(prm.device), attention_mask=mask.to(prm.device))
                rows_, cols = zip(
                    *((r, p) for r, item in enumerate(batch) for p in item.separator_positions), strict=True
                )
                at = hidden.last_hidden_state[list(rows_), list(cols)].float()
                torch.softmax(model.score(at), dim=-1)[:, 1].cpu()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    scorer = PackedScorer(prm, 0)
    add = rows.append
    add(
        (
            "engine",
            "RL mix, one request at a time",
            rl_tokens / median_seconds(lambda: [scorer.score([i]) for i in rl]),
            None,
        )
    )
    add(
        (
            "engine",
            f"RL mix, HF padded, length-sorted, {budget}",
            rl_tokens / median_seconds(lambda: padded_sorted(rl, budget)),
            None,
        )
    )
    for tokens in (budget, 2 * budget):
        add(
            (
                "engine",
                f"RL mix, packed, budget {tokens}",
                rl_tokens / median_seconds(lambda t=tokens: batches(rl, t, 0)),
                None,
            )
        )
    if cuda:
        add(
            (
                "engine",
                f"peak GPU memory at budget {budget}: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
                0,
                None,
            )
        )
    for name, groups in (("best-of-8", work.bon8), ("best-of-64", work.bon64), ("step search x16", work.search)):
        encoded = work.encode([item for group in groups for item in group])
        tokens = sum(len(item) for item in encoded)
        unshared = tokens / median_seconds(lambda e=encoded: batches(e, budget, 0))
        shared = tokens / median_seconds(lambda e=encoded: batches(e, budget, 64))
        add(("engine", f"{name}, unshared", unshared, None))
        add(("engine", f"{name}, shared prefix (effective)", shared, shared / unshared))


def matmul_peak(dtype, cuda: bool) -> float:
    import torch

    n = 8192 if cuda else 1024
    a = torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu")
    seconds = median_seconds(lambda: a @ a, 10)
    return 2 * n**3 / seconds


def flops_per_token(prm, mean_length: float) -> float:
    """Matmul FLOPs per token: 2 x non-embedding parameters, plus causal attention over half the context."""
    config = prm.model.config
    params = sum(p.numel() for name, p in prm.model.named_parameters() if "embed_tokens" not in name)
    return 2 * params + 2 * config.num_hidden_layers * config.hidden_size * mean_length


def http_rows(checkpoint: Path, work, rows: list, port: int, duration: float) -> None:
    import httpx

    server = start_prm_serve(checkpoint, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(port, server)

        def body(items):
            return {"items": [{"problem": i.problem, "steps": i.steps} for i in items]}

        def rerank(items):
            return {"problem": items[0].problem, "candidates": [{"steps": i.steps} for i in items]}

        workloads = [
            ("(a) RL, 64 rollouts a request", "/score_steps", body, work.rl, 4),
            ("(b) best-of-8 /rerank", "/rerank", rerank, work.bon8, 8),
            ("(b) best-of-64 /rerank", "/rerank", rerank, work.bon64, 4),
            ("(c) step search x16", "/score_steps", body, work.search, 8),
        ]
        for name, path, shape, groups, concurrency in workloads:
            tokens = [sum(len(i) for i in work.encode(group)) for group in groups]
            rate = asyncio.run(drive(url + path, [shape(group) for group in groups], tokens, concurrency, duration))
            rows.append(("http", name, rate, None))
        latencies = []
        with httpx.Client(timeout=60) as client:
            for item in work.single:
                started = time.perf_counter()
                client.post(
                    f"{url}/score_steps", json={"problem": item.problem, "steps": item.steps}
                ).raise_for_status()
                latencies.append(time.perf_counter() - started)
        length = statistics.mean(len(i) for i in work.encode(work.single))
        rows.append(
            (
                "http",
                f"(d) single {length:.0f}-token request, idle server: p50 {statistics.median(latencies) * 1000:.1f} ms",
                0,
                None,
            )
        )
    finally:
        server.terminate()
        server.wait(60)


async def drive(url: str, bodies: list[dict], tokens: list[int], concurrency: int, duration: float) -> float:
    """Tokens/s of `concurrency` clients sending `bodies` in turn for `duration` seconds (and their last answers)."""
    import httpx

    done = 0
    started = time.perf_counter()

    async def loop(client, offset):
        nonlocal done
        index = offset
        while time.perf_counter() < started + duration:
            response = await client.post(url, json=bodies[index % len(bodies)])
            response.raise_for_status()
            done += tokens[index % len(bodies)]
            index += 1

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(loop(client, i) for i in range(concurrency)))
    return done / (time.perf_counter() - started)


def report(rows: list, peak: float, flops: float, failures: list[str], cuda: bool) -> None:
    unit = "TFLOP/s" if cuda else "GFLOP/s"
    scale = 1e12 if cuda else 1e9
    print(
        f"\nmatmul peak {peak / scale:.1f} {unit}; model {flops / 1e9:.2f} GFLOP per token (RL mix); "
        f"arithmetic limit {peak / flops:,.0f} tokens/s"
    )
    print(f"{'where':7s} {'workload / way':58s} {'tokens/s':>10s} {'of peak':>8s} {'ratio':>7s}")
    for where, name, rate, ratio in rows:
        if not rate:
            print(f"{where:7s} {name}")
            continue
        share = f"{rate * flops / peak:7.0%}" if "RL" in name else ""
        print(f"{where:7s} {name:58s} {rate:10,.0f} {share:>8s} {f'{ratio:.2f}x' if ratio else '':>7s}")
    print("correctness: " + ("ok" if not failures else "FAILED " + ", ".join(failures)))


if __name__ == "__main__":
    main()
