# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml builds both):
#   docker build --target api    -t sdxl-img2img-api .     slim Python, no torch: the HTTP API
#   docker build --target worker -t sdxl-img2img-worker .  CUDA runtime + CUDA torch + diffusers
#
# The worker base ships a CUDA build of torch; `pip install .[worker]` keeps it (torch is unpinned).
# CUDA 12.8 wants an NVIDIA driver >= 570 on the host; for an older driver pick an older base, e.g.
#   docker build --target worker --build-arg WORKER_BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG WORKER_BASE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

# ---------------------------------------------------------------------------------------------
# api: the HTTP side. Stateless; run as many replicas as wanted behind a load balancer.
FROM ${PYTHON_IMAGE} AS api

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SDXL_MODELS_FILE=/app/models.yaml

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin sdxl

WORKDIR /opt/sdxl-img2img
# Dependencies first, from the project metadata alone (empty stand-in packages), so that a code
# change does not reinstall them. The stand-ins and their build/ leftovers are removed: setuptools
# would otherwise keep the stale empty files, which are newer than the copied sources.
COPY pyproject.toml README.md ./
RUN mkdir app worker && touch app/__init__.py worker/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall --yes sdxl-img2img \
    && rm -rf app worker build ./*.egg-info
COPY app ./app
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps .

WORKDIR /app
COPY models.yaml ./models.yaml
# The `sdxl` user, by number: Kubernetes' runAsNonRoot can only verify a numeric user.
USER 10001
EXPOSE 8000
# Liveness only (the process answers): /readyz also needs a live worker, which is not the API's fault.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["sdxl-img2img", "api", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# worker: one process per GPU, models kept resident. Weights live on the /models volume.
FROM ${WORKER_BASE} AS worker

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SDXL_MODELS_FILE=/app/models.yaml \
    HF_HOME=/models/hf \
    SDXL_CACHE_DIR=/models/sdxl \
    SDXL_DEVICE=cuda

# /models is created owned by the non-root user: Docker copies that ownership into a new named volume.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin sdxl \
    && mkdir -p /models/hf /models/sdxl \
    && chown -R sdxl:sdxl /models

WORKDIR /opt/sdxl-img2img
COPY pyproject.toml README.md ./
RUN mkdir app worker && touch app/__init__.py worker/__init__.py \
    && pip install --no-cache-dir "./[worker]" \
    && pip uninstall --yes sdxl-img2img \
    && rm -rf app worker build ./*.egg-info
COPY app ./app
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps .

WORKDIR /app
COPY models.yaml ./models.yaml
USER 10001
VOLUME ["/models"]
# Healthy while this container's worker is in the registry of live workers (no keyspace scan).
# Worker ids start with the hostname (worker/service.py), so the check is pinned to this container.
# The long start period covers a first start that downloads checkpoints (`models pull` avoids it).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD ["python", "-c", "from app.core.worker_registry import healthcheck; raise SystemExit(healthcheck())"]
CMD ["sdxl-img2img", "worker"]
