# The HTTP API: Flask behind gunicorn. No torch, no transformers in the final image.
#
#   docker build -f docker/api.Dockerfile -t moderation-api .
#
# Build arguments PYTHON_IMAGE, BUILD_EXTRAS and TORCH_EXTRA_INDEX_URL: as in docker/worker.Dockerfile.
#
# The API reads each model's config.json (labels, thresholds; shared/model_registry.py) but never
# its weights. The "model" stage builds the bundled model exactly as the worker image does and
# only the small metadata files are copied out, so both images agree on labels and thresholds.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# model: throw-away stage with torch, used only to assemble the bundled model's config.json.
# Its steps up to the model build are textually identical to the builder stage of
# docker/worker.Dockerfile, so the layer cache shares them between the two images.
FROM ${PYTHON_IMAGE} AS model
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
RUN python -m model.build --output /opt/models/moderation-minilm
# Everything but the weights (config.json, tokenizer files, model card): a few MB.
RUN mkdir -p /opt/model-meta/moderation-minilm \
    && find /opt/models/moderation-minilm -maxdepth 1 -type f ! -name '*.safetensors' \
        -exec cp {} /opt/model-meta/moderation-minilm/ \;

# ---------------------------------------------------------------------------------------------
# builder: the API's wheels (requirements/api.txt, which has no torch) into a clean venv.
FROM ${PYTHON_IMAGE} AS builder
ARG BUILD_EXTRAS=docker/build-extras
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY docker/setup.sh /usr/local/bin/moderation-setup
RUN moderation-setup venv
COPY ${BUILD_EXTRAS}/ /tmp/build-extras/
COPY requirements/common.txt requirements/api.txt requirements/lock.txt /tmp/requirements/
# The `! pip show torch` guard fails the build if a dependency ever drags torch in.
RUN moderation-setup pip -r /tmp/requirements/api.txt -c /tmp/requirements/lock.txt \
    && ! pip show torch >/dev/null 2>&1

# ---------------------------------------------------------------------------------------------
# source: the project's code as the context holds it (.dockerignore leaves out tests, docs, local
# state), so new packages and static files land in the image without editing this file.
FROM ${PYTHON_IMAGE} AS source
COPY . /app
RUN rm -rf /app/docker/build-extras

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
COPY docker/setup.sh /usr/local/bin/moderation-setup
RUN moderation-setup python \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
COPY --from=model /opt/model-meta /opt/models
WORKDIR /app
COPY --from=source /app /app
USER app
EXPOSE 5000
# Serving HTTP on $PORT. Not /readyz: that stays 503 until a worker serves the default model,
# and jobs are accepted (queued) before then.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '5000'), timeout=3)"
# Exec form: gunicorn itself gets SIGTERM (a graceful shutdown: stop accepting, finish in-flight
# requests within graceful_timeout, exit). api/gunicorn_conf.py empties PROMETHEUS_MULTIPROC_DIR
# in on_starting, so a restarted container never serves stale samples.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gunicorn", "--config", "api/gunicorn_conf.py", "api:create_app()"]
