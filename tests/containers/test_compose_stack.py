"""The compose stack, run for real: `make test-containers` (not part of `make test`).

Builds the API and worker images from docker/*.Dockerfile on a local Debian base (no image
registry is reachable here), starts Redis, the API, 3 worker replicas and Prometheus from
docker-compose.yaml plus tests/containers/compose.override.yaml (merged by `docker-compose config`;
host networking, so every connection stays on 127.0.0.1), submits JOBS jobs, `docker kill`s one
worker mid-run, and checks that every job succeeded, every replica did part of the work, Prometheus scraped the API and
the workers, and `docker-compose down` leaves nothing running. Figures go to stdout and to
var/containers-test/report.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.skipif(os.environ.get("MODERATION_CONTAINER_TESTS") != "1",
                                reason="needs Docker: run by `make test-containers`")

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "tests" / "containers" / "compose.override.yaml"
WORK_DIR = ROOT / "var" / "containers-test"
PROJECT = "moderation-ctest"
BASE_IMAGE = "moderation-debian-base:bookworm"
REPLICAS = 3
JOBS = 2400
KILL_AFTER = JOBS // 4  # completed jobs before one worker is killed
VISIBILITY_TIMEOUT = 20  # the killed worker's unacknowledged batch comes back after this
SERVICES = ["redis", "api", "worker", "prometheus"]


def log(message: str) -> None:
    print(f"[containers {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(args: list[str], env: dict | None = None, timeout: float = 1800, check: bool = True) -> str:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-5000:]}\nstderr:\n{result.stderr[-5000:]}")
    return result.stdout


def free_port_range(count: int, start: int = 19100) -> tuple[int, int]:
    """count consecutive ports that nothing uses."""
    for first in range(start, 30000, count):
        if all(_port_free(port) for port in range(first, first + count)):
            return first, first + count - 1
    raise RuntimeError("no free port range")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    def __init__(self):
        # Below the ephemeral range, so no client socket of another process takes them meanwhile.
        first, _ = free_port_range(3 + REPLICAS)
        self.redis_port, self.api_port, self.prometheus_port = first, first + 1, first + 2
        self.worker_ports = (first + 3, first + 2 + REPLICAS)
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.prometheus = f"http://127.0.0.1:{self.prometheus_port}"
        self.report: dict = {}
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        self.prometheus_config = WORK_DIR / "prometheus.yml"
        self.prometheus_config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "api", "static_configs": [{"targets": [f"127.0.0.1:{self.api_port}"]}]},
                {"job_name": "worker", "static_configs": [{"targets": [
                    f"127.0.0.1:{port}" for port in range(self.worker_ports[0], self.worker_ports[1] + 1)]}]},
            ],
        }))
        self.env = {
            **os.environ,
            "TEST_BASE_IMAGE": BASE_IMAGE,
            "TEST_REDIS_PORT": str(self.redis_port),
            "TEST_API_PORT": str(self.api_port),
            "TEST_PROMETHEUS_PORT": str(self.prometheus_port),
            "TEST_PROMETHEUS_CONFIG": str(self.prometheus_config),
            "TEST_WORKER_METRICS_PORTS": "{}-{}".format(*self.worker_ports),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "RATE_LIMITER": "off",
            "VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "WORKER_CPUS": "1",
            "TORCH_THREADS": "1",
            "CACHE_TTL": "0",
        }

        self.compose_file = self.merged_compose_file()

    def merged_compose_file(self) -> Path:
        """docker-compose.yaml with the override, resolved by docker-compose itself, less the host
        port mappings of the services that now use host networking (Docker refuses both at once,
        and Compose 1.29 cannot remove a key in an override)."""
        merged = yaml.safe_load(sh(["docker-compose", "-f", "docker-compose.yaml", "-f", str(OVERRIDE), "config"],
                                   env=self.env))
        for service in merged["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
                service.pop("expose", None)
        path = WORK_DIR / "docker-compose.merged.yaml"
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
        return path

    def compose(self, *args: str, timeout: float = 1800) -> str:
        return sh(["docker-compose", "-p", PROJECT, "--project-directory", str(ROOT), "-f", str(self.compose_file),
                   *args], env=self.env, timeout=timeout)

    def containers(self, service: str | None = None, all_states: bool = False) -> list[str]:
        args = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        if all_states:
            args.append("-a")
        return sh(args).split()

    def inspect(self, container: str) -> dict:
        return json.loads(sh(["docker", "inspect", container]))[0]

    def metrics_ports(self, container: str) -> list[int]:
        logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stderr
        return [int(p) for p in re.findall(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", logs)]

    def query(self, promql: str) -> list[dict]:
        response = requests.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def wait_healthy(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        states: dict = {}
        while time.monotonic() < deadline:
            containers = self.containers()
            states = {}
            for container in containers:
                info = self.inspect(container)
                name = info["Name"].lstrip("/")
                states[name] = info["State"].get("Health", {}).get("Status", info["State"]["Status"])
            if len(states) == len(SERVICES) - 1 + REPLICAS and all(s == "healthy" for s in states.values()):
                return
            time.sleep(2)
        for container in self.containers(all_states=True):
            log(f"--- logs of {container}:\n" + subprocess.run(["docker", "logs", "--tail", "40", container],
                                                              capture_output=True, text=True).stderr)
        raise AssertionError(f"not all containers healthy within {timeout}s: {states}")


@pytest.fixture(scope="module")
def stack():
    for tool in ("docker", "docker-compose"):
        assert shutil.which(tool), f"{tool} missing: scripts/system_deps.sh containers installs it"
    stack = Stack()
    stack.compose("down", "-v", "--remove-orphans", timeout=300)  # leftovers of an interrupted run
    sh([str(ROOT / "scripts" / "containers" / "debian_base_image.sh"), BASE_IMAGE])
    sh([str(ROOT / "scripts" / "containers" / "build_extras.sh")])
    started = time.monotonic()
    stack.compose("build", "redis", "api", "worker")
    stack.report["build_seconds"] = round(time.monotonic() - started, 1)
    stack.report["image_mb"] = {
        image: round(int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", image])) / 1e6)
        for image in ("moderation-api:latest", "moderation-worker:latest", "moderation-test-services:latest")}
    log(f"images built in {stack.report['build_seconds']} s; sizes (MB): {stack.report['image_mb']}")
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--scale", f"worker={REPLICAS}", *SERVICES, timeout=600)
        stack.wait_healthy()
        stack.report["healthy_seconds"] = round(time.monotonic() - started, 1)
        log(f"{REPLICAS} workers, api, redis, prometheus healthy after {stack.report['healthy_seconds']} s")
        yield stack
    finally:
        WORK_DIR.joinpath("report.json").write_text(json.dumps(stack.report, indent=2))
        log(f"report: {json.dumps(stack.report)}")
        if stack.containers(all_states=True):
            stack.compose("down", "-v", "--remove-orphans", "--timeout", "30", timeout=300)


def submit(session: requests.Session, api: str, i: int) -> str:
    # Distinct texts: the result cache (off here anyway) must not answer for the workers.
    body = {"input_text": f"message {i}: you are {'wonderful' if i % 2 else 'an idiot'} #{i}"}
    for _ in range(5):
        response = session.post(f"{api}/generate", json=body, timeout=30)
        if response.status_code == 202:
            return response.json()["job_id"]
        time.sleep(1)
    raise AssertionError(f"POST /generate answered {response.status_code}: {response.text}")


def completed_total(stack: Stack) -> float:
    return sum(float(r["value"][1]) for r in stack.query('sum(moderation_jobs_completed_total{job="worker"})'))


@pytest.fixture(scope="module")
def run(stack):
    workers = stack.containers("worker")
    assert len(workers) == REPLICAS
    ports = {container: stack.metrics_ports(container) for container in workers}
    assert all(len(p) == 1 for p in ports.values()), f"each worker announces one metrics port: {ports}"
    victim = workers[0]
    started = time.monotonic()
    session = requests.Session()
    # Submit in the background and kill while jobs are still coming in and being worked on.
    submitter = ThreadPoolExecutor(8)
    futures = [submitter.submit(submit, session, stack.api, i) for i in range(JOBS)]

    victim_port = ports[victim][0]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = completed_total(stack)
        victim_done = stack.query(f'moderation_jobs_completed_total{{instance="127.0.0.1:{victim_port}"}}')
        if done >= KILL_AFTER and victim_done and float(victim_done[0]["value"][1]) > 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the workers did not get through KILL_AFTER jobs in 600 s")
    sh(["docker", "kill", victim])
    submitted = sum(future.done() for future in futures)
    name = stack.inspect(victim)["Name"].lstrip("/")
    stack.report["killed"] = {"container": name, "after_completed_jobs": int(done), "jobs_submitted_then": submitted}
    log(f"docker kill {name} after {int(done)} completed jobs ({submitted} submitted)")
    assert done < JOBS * 0.9, "the kill came after nearly every job had finished: nothing was tested"
    job_ids = [future.result() for future in futures]
    submitter.shutdown()
    stack.report["jobs"] = len(job_ids)
    stack.report["submit_seconds"] = round(time.monotonic() - started, 1)
    log(f"submitted {len(job_ids)} jobs in {stack.report['submit_seconds']} s")

    statuses: dict[str, str] = {}
    pending = list(job_ids)
    deadline = time.monotonic() + 600
    while pending and time.monotonic() < deadline:
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda j: session.get(f"{stack.api}/jobs/{j}", timeout=30).json(), pending))
        for job_id, body in zip(pending, bodies):
            statuses[job_id] = body["status"]
        pending = [j for j in pending if statuses[j] not in ("succeeded", "failed")]
        if pending:
            time.sleep(2)
    stack.report["all_done_seconds"] = round(time.monotonic() - started, 1)
    stack.report["statuses"] = {s: list(statuses.values()).count(s) for s in set(statuses.values())}
    log(f"job statuses {stack.report['statuses']} {stack.report['all_done_seconds']} s after the first submit")
    after = {container: stack.inspect(container)["State"] for container in workers}
    stack.report["killed"]["restarted_by_docker"] = after[victim]["Running"]
    time.sleep(3)  # one more scrape of every counter
    return {"job_ids": job_ids, "statuses": statuses, "ports": ports, "victim": victim}


def test_every_job_succeeded(run):
    counts = {s: list(run["statuses"].values()).count(s) for s in set(run["statuses"].values())}
    assert len(run["statuses"]) == JOBS >= 2000
    assert counts == {"succeeded": JOBS}, f"job statuses: {counts}"


def completions_by_instance(stack: Stack) -> dict[str, float]:
    """Jobs each worker finished over the run: the counter's increase, restarts included."""
    rows = stack.query('moderation_jobs_completed_total{job="worker"}[30m]')
    totals: dict[str, float] = {}
    for row in rows:
        values = [float(v) for _, v in row["values"]]
        increase, previous = values[0], values[0]
        for value in values[1:]:
            increase += value - previous if value >= previous else value
            previous = value
        instance = row["metric"]["instance"]
        totals[instance] = totals.get(instance, 0) + increase
    return totals


def test_every_replica_did_part_of_the_work(stack, run):
    by_instance = completions_by_instance(stack)
    per_replica = {stack.inspect(c)["Name"].lstrip("/"): by_instance.get(f"127.0.0.1:{p[0]}", 0)
                   for c, p in run["ports"].items()}
    stack.report["jobs_per_replica"] = per_replica
    log(f"jobs completed per replica (Prometheus): {per_replica}")
    assert len(per_replica) == REPLICAS
    assert all(count > 0 for count in per_replica.values()), per_replica
    # The killed worker's last second of work was never scraped; the survivors' counts are complete.
    assert JOBS * 0.9 <= sum(per_replica.values()), per_replica


def test_prometheus_scraped_the_api_and_the_workers(stack, run):
    targets = requests.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    health = {f"{t['labels']['job']} {t['labels']['instance']}": t["health"] for t in targets}
    stack.report["prometheus_targets"] = health
    log(f"Prometheus targets now: {health}")
    assert health[f"api 127.0.0.1:{stack.api_port}"] == "up"
    ever_up = {r["metric"]["instance"] for r in stack.query('max_over_time(up{job="worker"}[30m]) == 1')}
    assert {f"127.0.0.1:{p[0]}" for p in run["ports"].values()} <= ever_up, ever_up
    assert stack.query('sum(moderation_http_requests_total{job="api", endpoint="/generate"})'), \
        "no API request counts in Prometheus"


def test_each_replica_is_limited_to_its_cpus_and_threads(stack, run):
    for container in run["ports"]:
        info = stack.inspect(container)
        env = dict(item.split("=", 1) for item in info["Config"]["Env"])
        assert info["HostConfig"]["NanoCpus"] == 10**9, "WORKER_CPUS=1 did not reach the container's cpus limit"
        assert env["TORCH_THREADS"] == "1" and env["WORKER_PROCESSES"] == "1"
    stack.report["worker_limits"] = {"cpus": 1, "TORCH_THREADS": 1}


def test_compose_down_leaves_nothing_running(stack, run):
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "30", timeout=300)
    left = stack.containers(all_states=True)
    assert not left, f"containers left after down: {left}"
    networks = sh(["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"])
    volumes = sh(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"])
    assert not networks.split() and not volumes.split(), (networks, volumes)
    for port in (stack.api_port, stack.redis_port, stack.prometheus_port, *range(stack.worker_ports[0],
                                                                                   stack.worker_ports[1] + 1)):
        assert not _listening(port), f"something still listens on 127.0.0.1:{port}"
