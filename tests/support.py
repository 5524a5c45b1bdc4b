"""Real processes for integration tests: a private Redis, `python -m worker`, gunicorn (scripts/launch.py).

Every test stack gets its own Redis (or DB) and free ports, so tests never touch the machine's
Redis on 6379 and can stop/start theirs to simulate outages.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import redis
import requests

from scripts import rabbitmq
from scripts.launch import (  # noqa: F401  (re-exported: the tests' one import for processes)
    ROOT,
    ApiServer,
    Proc,
    RedisServer,
    base_env,
    free_port,
    start_api,
    start_worker,
    stop_all,
    wait_until,
    worker_command,
)
from shared.broker import broker_queues
from shared.celery_app import make_celery
from shared.config import Settings, load_settings
from shared.redis_client import make_redis
from worker.redelivery import UNACKED_HASH


def wait_for_job(api_url: str, job_id: str, timeout: float = 60, headers: dict | None = None) -> dict:
    """Follow a job with the API's own long-poll (?wait=) until it finishes; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        wait = max(0.0, min(10.0, deadline - time.monotonic()))
        body = requests.get(f"{api_url}/jobs/{job_id}", params={"wait": f"{wait:.2f}"}, headers=headers,
                            timeout=wait + 15).json()
        if body.get("status") in ("succeeded", "failed"):
            return body
        if time.monotonic() >= deadline:
            raise AssertionError(f"job {job_id} not finished after {timeout:g}s; last answer: {body}")


def distinct_texts(count: int, tag: str) -> list[str]:
    """Different texts (so the result cache cannot answer them) made of words the tiny model knows."""
    from tests.tiny_models import WORDS
    return [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} {tag} {i}" for i in range(count)]


def submit_all(api_url: str, texts: list[str], threads: int = 8) -> list[str]:
    """One single-text job per text through POST /generate (each must be accepted); the job ids in order."""
    def post(text):
        response = requests.post(api_url + "/generate", json={"input_text": text}, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, texts))


class RabbitVhost:
    """A private vhost on the machine's RabbitMQ (created and deleted with rabbitmqctl)."""

    def __init__(self, name: str):
        self.name = name
        self.url = f"amqp://guest:guest@127.0.0.1:5672/{name}"

    def __enter__(self) -> RabbitVhost:
        if not rabbitmq.answers():
            raise RuntimeError("no RabbitMQ at 127.0.0.1:5672: run `python -m scripts.rabbitmq ensure`")
        self._ctl("add_vhost", self.name)
        self._ctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc) -> None:
        self._ctl("delete_vhost", self.name)

    @staticmethod
    def _ctl(*args: str) -> str:
        return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True,
                              timeout=60).stdout

    def unacked(self, queue: str) -> int:
        """Messages delivered to a consumer and not yet acknowledged."""
        return self.queue_info(queue, "messages_unacknowledged")

    def consumers(self, queue: str) -> int:
        """Consumers of the queue now, as its channels know them: a cancelled consumer is gone at once (a
        quorum queue's passive declare still counts it while it holds unacknowledged messages)."""
        return sum(line.strip() == queue for line in self._ctl("list_consumers", "-p", self.name,
                                                                   "--no-table-headers", "queue_name").splitlines())

    def queue_info(self, queue: str, item: str = "messages") -> int:
        """One of rabbitmqctl's list_queues items (`messages`: ready + unacknowledged); 0 for no such queue."""
        for line in self._ctl("list_queues", "-p", self.name, "--no-table-headers", "name",
                              item).splitlines():
            name, _, count = line.strip().partition("\t")
            if name == queue:
                return int(count)
        return 0


class TcpProxy:
    """127.0.0.1:<port> forwarded to a target; stop() refuses and cuts every connection (an outage the
    test controls without stopping a shared server), start() serves the same port again. freeze() stops
    forwarding without closing anything (a hung server or a partition, as SIGSTOP would be), thaw() resumes."""

    def __init__(self, target_port: int):
        self.target_port, self.port = target_port, free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
            listener, self._listener = self._listener, None
        for sock in [listener, *sockets]:
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # idle connections (AMQP between heartbeats) stay open
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class BrokerUnderTest:
    """The broker a parametrised test runs on: its URL, what the service reads (depth), and what only a
    test looks at (messages held unacknowledged by workers)."""

    def __init__(self, kind: str, url: str, vhost: RabbitVhost | None = None):
        self.kind, self.url, self.vhost = kind, url, vhost

    @property
    def is_redis(self) -> bool:
        return self.kind == "redis"

    def settings(self, env: dict) -> Settings:
        return load_settings({**env, "CELERY_BROKER_URL": self.url})

    def depth(self, env: dict, queue: str) -> int:
        """Read as the API reads it (shared/broker.py); kombu's connection pools are process-wide."""
        settings = self.settings(env)
        return broker_queues(settings, make_celery(settings), make_redis(settings)).depth(queue)

    def unacked(self, queue: str) -> int:
        if self.is_redis:
            return redis.Redis.from_url(self.url).hlen(UNACKED_HASH)
        return self.vhost.unacked(queue)


@contextmanager
def broker_for(kind: str, redis_url: str, proxied: bool = False):
    """A broker for one parametrised module: the record Redis itself, or a private RabbitMQ vhost
    (reached through a TcpProxy the test can stop when `proxied`)."""
    if kind == "redis":
        yield BrokerUnderTest(kind, redis_url)
        return
    with RabbitVhost(f"test-{uuid.uuid4().hex[:12]}") as vhost:
        if not proxied:
            yield BrokerUnderTest(kind, vhost.url, vhost)
            return
        proxy = TcpProxy(rabbitmq.PORT).start()
        try:
            broker = BrokerUnderTest(kind, f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost.name}", vhost)
            broker.proxy = proxy
            yield broker
        finally:
            proxy.stop()


class RedisMonitor:
    """Redis MONITOR in a thread: every command the server runs while it is active."""

    STOP = "redis-monitor-stop"

    def __init__(self, url: str):
        self.url = url
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.commands: list[str] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        # No socket timeout: redis-py drops the connection (and the MONITOR) on a read timeout.
        with self.client.monitor() as monitor:
            self.ready.set()
            while True:
                command = monitor.next_command()["command"]
                if self.STOP in command:
                    return
                self.commands.append(command)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10), "MONITOR did not start"
        return self

    def __exit__(self, *exc):
        redis.Redis.from_url(self.url).echo(self.STOP)
        self.thread.join(10)
        assert not self.thread.is_alive(), "MONITOR thread did not stop"
