"""Baseline: a model-card-style PRM server, the way most teams first serve a PRM.

FastAPI, one unpadded forward per request (transformers' Qwen2Model with SDPA
attention, the head applied at the separator positions, softmax as in the model
card's `make_step_rewards`). Forwards are serialised by a lock, as one device would
be; tokenisation runs outside it in FastAPI's thread pool. Same checkpoint, same
request and response shape as `/score_steps` (single form).

    python loadtest/baseline_server.py CHECKPOINT_DIR --port 8001
"""

import argparse
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen2Model

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class Request(BaseModel):
    problem: str
    steps: list[str]


def build_app(path: Path) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(path)
    backbone = Qwen2Model.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    weights: dict[str, torch.Tensor] = {}
    for file in path.glob("*.safetensors"):
        weights.update(load_file(file))
    hidden_size = backbone.config.hidden_size
    head = torch.nn.Sequential(
        torch.nn.Linear(hidden_size, hidden_size), torch.nn.ReLU(), torch.nn.Linear(hidden_size, 2)
    )
    head.load_state_dict({k.removeprefix("score."): v.float() for k, v in weights.items() if k.startswith("score.")})
    separator = tokenizer.encode("<extra_0>")[0]
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/score_steps")
    def score_steps(request: Request) -> dict:
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": request.problem},
            {"role": "assistant", "content": "<extra_0>".join(request.steps) + "<extra_0>"},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        input_ids = tokenizer.encode(text, return_tensors="pt")
        with lock, torch.inference_mode():
            hidden = backbone(input_ids=input_ids).last_hidden_state
            probabilities = F.softmax(head(hidden.float()), dim=-1)[0]
        scores = probabilities[input_ids[0] == separator][:, 1].tolist()
        return {"step_scores": scores, "model": path.name, "model_version": "baseline"}

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.checkpoint), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
