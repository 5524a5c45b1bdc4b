# Redis and Prometheus from Debian's packages, for the compose test where no image registry is
# reachable: one small image standing in for redis:7 and prom/prometheus (tests/containers/).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server prometheus wget >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data /prometheus
