"""Worker image size, pull-free start-to-ready and first-job latency, per image (docs/deployment.md "Kubernetes").

    python -m bench.worker_image moderation-worker:before moderation-worker:latest [--runs 3]

For each image, each run: a private Redis, then the chart's dev pods (values-dev.yaml) run with docker
as their pod specs say (scripts/containers/pods.py) with that image as the worker's; the image is
already local, so "start to ready" is `docker run` until the worker's readiness probe (its heartbeat:
model loaded, consuming) first passes; then one job through the API container, submission to result.
Needs Docker and the images (make test-chart builds moderation-api:latest and moderation-worker:latest).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from scripts.containers.pods import dev_pods, docker
from scripts.launch import RedisServer
from tests.support import wait_for_job


def one_run(image: str) -> tuple[float, float]:
    repository, _, tag = image.rpartition(":")
    with tempfile.TemporaryDirectory() as data, RedisServer(Path(data)).start() as redis_server, \
            dev_pods(redis_server.port, {"images.worker.repository": repository, "images.worker.tag": tag}) as pods:
        started = time.monotonic()
        response = requests.post(f"{pods.api}/generate", json={"input_text": "you are an idiot"}, timeout=30)
        job = wait_for_job(pods.api, response.json()["job_id"], timeout=120)
        assert job["status"] == "succeeded", job
        return pods.ready_s[pods.pod("-worker-default").deployment["metadata"]["name"]], time.monotonic() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for image in args.images:
        size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6
        runs = [one_run(image) for _ in range(args.runs)]
        ready = [r[0] for r in runs]
        first = [r[1] for r in runs]
        print(f"{image}: ready {ready}, first job {[round(f, 2) for f in first]}", flush=True)
        rows.append((image, size, statistics.median(ready), statistics.median(first)))
    print(f"\n| image | size (MB) | start to ready (s, median of {args.runs}) | first job (s, median) |")
    print("| --- | --- | --- | --- |")
    for image, size, ready, first in rows:
        print(f"| {image} | {size:.0f} | {ready:.1f} | {first:.2f} |")


if __name__ == "__main__":
    main()
