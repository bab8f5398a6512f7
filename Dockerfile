# prm-service: one image for the scoring service and the offline jobs, in two variants of one file.
#   CUDA (default):  docker build -t prm-service:cuda .
#   CPU:             docker build -t prm-service:cpu --build-arg BASE_IMAGE=debian:bookworm-slim \
#                      --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   bash deploy/build-image.sh [cpu|cuda] builds either (docker, else buildah) and smoke-tests it.
#   docker run --gpus all -p 8000:8000 prm-service:cuda                          # serves the bundled demo PRM
#   docker run --gpus all -p 8000:8000 -v /srv/store:/models:ro prm-service:cuda # your model store instead
#   docker run prm-service:cpu prm synth --help                                  # the jobs, from the same image
# Only the few-MB demo PRM is baked in (as the store at /models); mount real weights or a store there,
# or let the Hub cache volume fill.
#
# BASE_IMAGE: any Debian or Ubuntu image; python3 (and curl) are installed where it lacks them.
# TORCH_INDEX_URL: where torch comes from; empty means pip's default index (on a machine whose pip
# config holds the CPU build, that one). WITH_VLLM=1 adds vLLM, for the annotation profile.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# The build stage: a venv with torch and the project. Nothing of it but /opt/venv reaches the image.
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
ARG WITH_VLLM=0
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv 2>/dev/null \
 || { apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv; }
ENV PATH=/opt/venv/bin:$PATH
# torch first, in its own layer: it is large and changes rarely.
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY model_store ./model_store
RUN pip install . \
 && if [ "$WITH_VLLM" = "1" ]; then pip install ".[vllm]"; fi

# The image: the base, python3 and curl (the health check), the venv, the demo store, a non-root user.
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    PRM_HOST=0.0.0.0 \
    PRM_PORT=8000 \
    PRM_STORE=/models
RUN { command -v python3 && command -v curl; } >/dev/null \
 || { apt-get update && apt-get install -y --no-install-recommends python3 curl ca-certificates \
      && rm -rf /var/lib/apt/lists/*; }
COPY --from=build /opt/venv /opt/venv
COPY model_store/store.json /models/store.json
COPY model_store/demo-arith /models/demo-arith
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
