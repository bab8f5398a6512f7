"""prm-service: online scoring and offline jobs for process reward models.

The rooms, and the one rule each follows (imports only run down this list, never back up):

- `api/`: HTTP only: bodies, routes, middleware, auth, error bodies; no tensors, engines or files.
- `runtime.py`: what is served now: loading, hot swaps, admission; routes reach the model only through it.
- `engine/`: the queue, token-budget batches and the worker threads that alone touch the device.
- `upstream.py`: the vLLM backend, another `Scorer` behind the same engine.
- `prm/`: what a PRM is (formatting, checkpoints, the served model, packing, attention, the scorer);
  shared by serving, training and evaluation, it knows nothing of HTTP, queues or training.
- `store/`: versioned checkpoints on disk; no torch.
- `jobs/`: the offline jobs (data, synth, train, evaluate); they use `prm/` and `store/`, never serving.
- `config.py`: every serving default, torch-free; `cli.py` and `cli_common.py`: the `prm` command;
  `logs.py`, `metrics.py`: log lines and Prometheus series; `client.py`: the Python client (httpx only).
"""

__version__ = "0.1.0"
