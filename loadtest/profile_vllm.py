"""Where vLLM's CPU build spends a forward: its offline engine on the same checkpoint and items as
bench_vs_vllm.py, timed, then one torch.profiler table of its operators (in one process, so the profiler
sees the engine). Runs in vLLM's own venv; `bench_forward.py --profile` prints the same table for ours.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_OMP_THREADS_BIND=0-1 \
      LD_PRELOAD=.venv-vllm/lib/libiomp5.so .venv-vllm/bin/python loadtest/profile_vllm.py
"""

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=HERE / "out/bench-prm-h256-l4", help="built by bench_http.py")
    parser.add_argument("--bodies", type=Path, default=HERE / "out/vs-vllm-vllm-gsm8k.jsonl", help="bench_vs_vllm.py")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--separator", type=int, default=4096, help="the step tag's token id")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from vllm import LLM
    from vllm.config import PoolerConfig

    prompts = [json.loads(line)["input"] for line in args.bodies.read_text().splitlines()][: args.items]
    llm = LLM(
        model=str(args.model),
        runner="pooling",
        dtype="float32",
        pooler_config=PoolerConfig(step_tag_id=args.separator),
        gpu_memory_utilization=0.15,
    )
    tokenizer = llm.get_tokenizer()
    tokens = sum(len(tokenizer(prompt)["input_ids"]) for prompt in prompts)
    llm.encode(prompts[:8], use_tqdm=False, pooling_task="token_classify")
    for _ in range(3):
        started = time.perf_counter()
        llm.encode(prompts, use_tqdm=False, pooling_task="token_classify")
        print(f"vLLM offline: {tokens / (time.perf_counter() - started):.0f} tokens/s over {len(prompts)} items")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        llm.encode(prompts, use_tqdm=False, pooling_task="token_classify")
    print(f"{tokens} tokens, torch threads {torch.get_num_threads()}")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
