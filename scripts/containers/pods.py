"""Run a rendered Kubernetes Deployment's container with docker, as the kubelet would (no cluster).

The container gets what the pod spec says: image, command and args, the env from the rendered
ConfigMap and Secret (envFrom) then its own `env`, the user, a read-only root filesystem with a tmpfs
for each emptyDir mount, dropped capabilities, no privilege escalation, the CPU and memory limits and
the grace period as the stop timeout. Host networking keeps every connection on 127.0.0.1; the
in-cluster Service names resolve to 127.0.0.1 (--add-host). Readiness is the rendered readinessProbe:
an HTTP GET on 127.0.0.1, or the exec command run with `docker exec`.

Used by tests/containers/test_chart_pods.py (`make test-chart`) and bench/worker_image.py.
"""

from __future__ import annotations

import re
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass

import redis
import requests

from scripts.chart import configmap_data, of_kind, render, secret_data
from scripts.launch import free_port

UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


def memory_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()
    return int(float(number) * UNITS.get(unit, 1))


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... exited {result.returncode}: {result.stderr[-2000:]}")
    return result


@dataclass
class RunningPod:
    name: str
    deployment: dict
    started: float  # time.monotonic() at `docker run`

    @property
    def container_spec(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]["containers"][0]

    def probe_passes(self, probe: str = "readinessProbe") -> bool:
        if probe not in self.container_spec:  # no probe: ready once running, as for the kubelet
            return self.running()
        spec = self.container_spec[probe]
        if "httpGet" in spec:
            port = spec["httpGet"]["port"]
            if not isinstance(port, int):
                port = next(p["containerPort"] for p in self.container_spec["ports"] if p["name"] == port)
            try:
                return requests.get(f"http://127.0.0.1:{port}{spec['httpGet']['path']}", timeout=5).ok
            except requests.RequestException:
                return False
        result = docker("exec", self.name, *spec["exec"]["command"], check=False, timeout=60)
        return result.returncode == 0

    def wait_ready(self, timeout: float) -> float:
        """Seconds from `docker run` until the readiness probe first passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.probe_passes():
                return time.monotonic() - self.started
            if not self.running():
                raise AssertionError(f"{self.name} exited:\n{self.logs()}")
            time.sleep(0.25)
        raise AssertionError(f"{self.name} not ready within {timeout:.0f}s:\n{self.logs()}")

    def running(self) -> bool:
        result = docker("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def logs(self, tail: int = 60) -> str:
        result = docker("logs", "--tail", str(tail), self.name, check=False)
        return result.stdout + result.stderr

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after the rendered grace period (docker stop); the exit code."""
        grace = self.deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        docker("stop", "--time", str(grace), self.name, check=False, timeout=grace + 60)
        code = docker("inspect", "-f", "{{.State.ExitCode}}", self.name, check=False).stdout.strip()
        return int(code) if code.lstrip("-").isdigit() else -1

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


def docker_run_args(deployment: dict, env_from: dict[str, str], hosts: list[str], name: str) -> list[str]:
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container.get("securityContext", {})
    pod_security = pod.get("securityContext", {})
    args = ["run", "-d", "--name", name, "--network", "host"]
    args += [f"--add-host={host}:127.0.0.1" for host in hosts]
    if pod_security.get("runAsUser") is not None:
        args += ["--user", f"{pod_security['runAsUser']}:{pod_security.get('runAsGroup', pod_security['runAsUser'])}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for mount in container.get("volumeMounts", []):
        if mount["name"] in empty_dirs:
            uid = pod_security.get("runAsUser", 0)
            args += ["--tmpfs", f"{mount['mountPath']}:rw,exec,uid={uid},gid={pod_security.get('fsGroup', uid)}"]
    for capability in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", capability]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        cpu = str(limits["cpu"])
        args += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
    if "memory" in limits:
        args += ["--memory", str(memory_bytes(limits["memory"]))]
    env = dict(env_from)
    env.update({item["name"]: item.get("value", "") for item in container.get("env", [])})
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    command = container.get("command", [])
    if command:
        args += ["--entrypoint", command[0]]
    args.append(container["image"])
    args += command[1:] + container.get("args", [])
    return args


def run_pod(deployment: dict, env_from: dict[str, str], hosts: list[str], name: str) -> RunningPod:
    docker("rm", "-f", name, check=False)
    started = time.monotonic()
    docker(*docker_run_args(deployment, env_from, hosts, name))
    return RunningPod(name, deployment, started)


@dataclass
class DevPods:
    pods: list[RunningPod]
    api: str  # the API container's base URL
    docs: list[dict]  # the rendered objects
    ready_s: dict[str, float]  # Deployment name -> seconds from docker run to readiness

    def pod(self, suffix: str) -> RunningPod:
        (pod,) = [p for p in self.pods if p.deployment["metadata"]["name"].endswith(suffix)]
        return pod


@contextmanager
def dev_pods(redis_port: int, overrides: dict | None = None, ready_timeout: float = 300,
             log=lambda message: None):
    """Every Deployment of the chart rendered with values-dev.yaml (plus `overrides`), run with docker
    against the Redis on 127.0.0.1:redis_port (standing in for the dev StatefulSet); yields once each
    readiness probe passed, removes the containers afterwards."""
    api_port, metrics_port, webhooks_metrics_port = free_port(), free_port(), free_port()
    # The Service port is the container's: with host networking, http://<service>:<port> reaches it.
    docs = render("dev", {"redis.internal.servicePort": redis_port, "api.port": api_port, "api.service.port": api_port,
                          "workerDefaults.metricsPort": metrics_port, "webhooks.metricsPort": webhooks_metrics_port,
                          **(overrides or {})})
    env_from = {**configmap_data(docs), **secret_data(docs)}
    # The dev Redis has a password (the rendered Secret's REDIS_PASSWORD): the stand-in gets the same.
    if env_from.get("REDIS_PASSWORD"):
        redis.Redis(port=redis_port).config_set("requirepass", env_from["REDIS_PASSWORD"])
    hosts = [service["metadata"]["name"] for service in of_kind(docs, "Service")]
    deployments = of_kind(docs, "Deployment")
    log(f"rendered dev: {len(docs)} objects; running {[d['metadata']['name'] for d in deployments]} "
        f"with REDIS_URL={re.sub(r':[^:@/]*@', ':***@', env_from['REDIS_URL'])} ({', '.join(hosts)} -> 127.0.0.1)")
    pods: list[RunningPod] = []
    try:
        for deployment in deployments:
            pods.append(run_pod(deployment, env_from, hosts, f"chart-pod-{deployment['metadata']['name']}"))
        ready = {}
        for pod in pods:
            ready[pod.deployment["metadata"]["name"]] = round(pod.wait_ready(ready_timeout), 1)
            log(f"{pod.name}: readiness probe passed {ready[pod.deployment['metadata']['name']]} s after docker run")
        yield DevPods(pods, f"http://127.0.0.1:{api_port}", docs, ready)
    finally:
        for pod in pods:
            pod.remove()
