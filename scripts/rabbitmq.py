"""`python -m scripts.rabbitmq ensure`: make sure a RabbitMQ answers at 127.0.0.1:5672 (for `make test`).

Starts the installed `rabbitmq-server` (Debian package) detached when nothing answers; exits 1 with
the command to install it when it is missing. The tests create a private vhost per test module with
`rabbitmqctl` (tests/support.py), so they never touch another user's queues.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

HOST, PORT = "127.0.0.1", 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}//"


def answers(host: str = HOST, port: int = PORT, timeout: float = 1.0) -> bool:
    """An AMQP 0-9-1 server answers the protocol header with its Connection.Start frame."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


def ensure(timeout: float = 90) -> int:
    if answers():
        return 0
    server = shutil.which("rabbitmq-server") or shutil.which("rabbitmq-server", path="/usr/sbin:/usr/lib/rabbitmq/bin")
    if not server:
        print("RabbitMQ is not installed: `sudo apt-get install -y rabbitmq-server` (the tests run every "
              "delivery test on Redis and on RabbitMQ)", file=sys.stderr)
        return 1
    print(f"no RabbitMQ at {HOST}:{PORT}: starting {server} -detached", flush=True)
    subprocess.run([server, "-detached"], check=False)
    deadline = time.monotonic() + timeout
    while not answers():
        if time.monotonic() > deadline:
            print(f"RabbitMQ did not answer at {HOST}:{PORT} within {timeout:.0f}s", file=sys.stderr)
            return 1
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(ensure() if sys.argv[1:2] in ([], ["ensure"]) else 2)
