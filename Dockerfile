# prm-service: one image for the scoring service and the offline jobs.
#   docker build -t prm-service .                                  # CUDA build of torch
#   docker build -t prm-service:vllm --build-arg WITH_VLLM=1 .     # plus vLLM, for the annotation profile
#   docker run --gpus all -p 8000:8000 prm-service                                   # serves the bundled demo PRM
#   docker run --gpus all -p 8000:8000 -v /srv/store:/models:ro prm-service          # your model store instead
#   docker run --gpus all -p 8000:8000 -e PRM_MODEL=Qwen/Qwen2.5-Math-PRM-7B prm-service
# Only the few-MB demo PRM is baked in (as the store at /models); mount real weights or a store there,
# or let the Hub cache volume fill.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG WITH_VLLM=0
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    PRM_HOST=0.0.0.0 \
    PRM_PORT=8000 \
    PRM_STORE=/models

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential curl \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv $VIRTUAL_ENV

# torch first, in its own layer: it is large and changes rarely.
RUN pip install "torch>=2.10" --index-url https://download.pytorch.org/whl/cu128

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY model_store ./model_store
RUN pip install . \
 && if [ "$WITH_VLLM" = "1" ]; then pip install ".[vllm]"; fi

COPY model_store /models
RUN useradd --create-home --uid 10001 prm \
 && mkdir -p /cache/huggingface \
 && chown -R prm /cache
USER prm
VOLUME ["/cache/huggingface"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=300s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PRM_PORT}/health" || exit 1

# The same image runs the offline jobs: docker run IMAGE prm <job> ...
CMD ["prm", "serve"]
