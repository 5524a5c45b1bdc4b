# syntax=docker/dockerfile:1
#
# The HTTP API: Flask behind gunicorn. No torch, no transformers in the final image.
#
#   docker build -f docker/api.Dockerfile -t moderation-api .
#
# The API reads each model's config.json (labels, thresholds; shared/model_registry.py) but never
# its weights. The "model" stage builds the bundled model exactly as the worker image does and
# only the small metadata files are copied out, so both images agree on labels and thresholds.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# model: throw-away stage with torch, used only to assemble the bundled model's config.json.
# Its first steps are textually identical to the builder stage of docker/worker.Dockerfile, so
# BuildKit shares those layers between the two images.
FROM ${PYTHON_IMAGE} AS model
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
RUN python -m model.build --output /opt/models/moderation-minilm
# Everything but the weights (config.json, tokenizer files, model card): a few MB.
RUN mkdir -p /opt/model-meta/moderation-minilm \
    && find /opt/models/moderation-minilm -maxdepth 1 -type f ! -name '*.safetensors' \
        -exec cp {} /opt/model-meta/moderation-minilm/ \;

# ---------------------------------------------------------------------------------------------
# builder: the API's wheels (requirements/api.txt, which has no torch) into a clean venv.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY requirements/common.txt requirements/api.txt /tmp/requirements/
# The `! pip show torch` guard fails the build if a dependency ever drags torch in.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/requirements/api.txt \
    && ! pip show torch >/dev/null 2>&1

# ---------------------------------------------------------------------------------------------
# runtime
FROM ${PYTHON_IMAGE} AS runtime
# PROMETHEUS_MULTIPROC_DIR: gunicorn's worker processes share metrics through files there.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MODEL_PATH=/opt/models/moderation-minilm \
    PORT=5000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
COPY --from=model /opt/model-meta /opt/models
WORKDIR /app
COPY shared/ shared/
COPY api/ api/
USER app
EXPOSE 5000
# Exec form: gunicorn itself gets SIGTERM (a graceful shutdown: stop accepting, finish in-flight
# requests within graceful_timeout, exit). api/gunicorn_conf.py empties PROMETHEUS_MULTIPROC_DIR
# in on_starting, so a restarted container never serves stale samples.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gunicorn", "--config", "api/gunicorn_conf.py", "api:create_app()"]
