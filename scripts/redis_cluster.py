"""A local Redis Cluster for tests, benchmarks and `make run`: six `redis-server --cluster-enabled yes` on
loopback (3 masters, 3 replicas), made a cluster with `redis-cli --cluster create ... --cluster-replicas 1`.

    python -m scripts.redis_cluster start  [--base-port 7100] [--dir var/redis-cluster] [--masters 3]
    python -m scripts.redis_cluster status [--base-port 7100] [--dir var/redis-cluster]
    python -m scripts.redis_cluster stop   [--base-port 7100] [--dir var/redis-cluster]

`start` returns once every node says `cluster_state:ok`, all 16384 slots are served and every master's replica
has finished its first sync (so WAIT counts it); it prints the REDIS_URL to use (seed nodes, comma-separated) and is a
no-op on a cluster already up. The CLI runs the servers as daemons (pid and log files in --dir/<port>/); `stop`
shuts them down and removes --dir.

From Python (tests/test_redis_cluster.py, the node-loss tests, bench/cluster.py):

    cluster = start_cluster(7100, tmp_path)        # children of this process, stopped at exit at the latest
    cluster.seed_url()                             # "redis://127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102"
    cluster.masters(), cluster.replicas()          # ports, as the cluster sees them now
    cluster.master_for_slot(key_or_slot)           # the port of the master serving it now
    cluster.kill(port); cluster.restart(port)      # lose a node (SIGKILL by default), bring it back
    cluster.wait_ok()                              # after a failover: state ok, every slot served again
    cluster.flushall(); cluster.stop()

Nodes are started with `cluster-node-timeout` NODE_TIMEOUT_MS (2 s: a lost master's replica takes over within a
few seconds) and `cluster-require-full-coverage no` (the masters still up keep serving their slots while one is
being replaced). No persistence: a restarted node rejoins as a replica and resyncs from its master.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from scripts.redis_server import answers, redis_binary

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "var" / "redis-cluster"
DEFAULT_BASE_PORT = 7100
NODE_TIMEOUT_MS = 2000
HOST = "127.0.0.1"
SLOTS = 16384


def _redis_cli() -> str:
    found = shutil.which("redis-cli") or str(Path(redis_binary()).with_name("redis-cli"))
    if not Path(found).exists():
        sys.exit("no redis-cli: `apt-get install redis-tools` (it comes with redis-server)")
    return found


class LocalCluster:
    """Six (2 x masters) redis-server nodes on base_port.. base_port + 2*masters - 1, data under data_dir/<port>/."""

    def __init__(self, base_port: int = DEFAULT_BASE_PORT, data_dir: Path | str = DEFAULT_DIR, masters: int = 3,
                 node_timeout_ms: int = NODE_TIMEOUT_MS):
        self.base_port, self.data_dir, self.node_timeout_ms = base_port, Path(data_dir).resolve(), node_timeout_ms
        self.ports = list(range(base_port, base_port + 2 * masters))
        self.processes: dict[int, subprocess.Popen] = {}
        self.daemonized = False

    # -- nodes ---------------------------------------------------------------------------------------------
    def _node_dir(self, port: int) -> Path:
        return self.data_dir / str(port)

    def _command(self, port: int, daemonize: bool) -> list[str]:
        node_dir = self._node_dir(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        return [redis_binary(), "--bind", HOST, "--port", str(port), "--dir", str(node_dir),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
                "--save", "", "--appendonly", "no", "--daemonize", "yes" if daemonize else "no",
                "--pidfile", str(node_dir / "redis.pid"), "--logfile", str(node_dir / "redis.log")]

    def client(self, port: int, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                           decode_responses=True)

    def _start_node(self, port: int, daemonize: bool) -> None:
        if answers(HOST, port):
            return
        if daemonize:
            subprocess.run(self._command(port, True), check=True)
        else:
            self.processes[port] = subprocess.Popen(self._command(port, False), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not answers(HOST, port):
            process = self.processes.get(port)
            if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
                log = self._node_dir(port) / "redis.log"
                raise RuntimeError(f"redis-server on {port} did not start:\n"
                                   f"{log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.05)

    # -- the cluster ---------------------------------------------------------------------------------------
    def start(self, daemonize: bool = False, timeout: float = 60) -> LocalCluster:
        """Start the nodes (those not already up), form the cluster unless it is formed, wait until it is ok."""
        self.daemonized = daemonize
        if not daemonize:
            atexit.register(self.stop)
        for port in self.ports:
            self._start_node(port, daemonize)
        if not self._formed():
            if len(self.ports) >= 6:
                nodes = [f"{HOST}:{port}" for port in self.ports]
                created = subprocess.run([_redis_cli(), "--cluster", "create", *nodes, "--cluster-replicas", "1",
                                          "--cluster-yes"], capture_output=True, text=True, timeout=120)
                if created.returncode != 0:
                    raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            else:
                self._create_small(timeout)
        return self.wait_ok(timeout)

    def _create_small(self, timeout: float) -> None:
        """What `redis-cli --cluster create` refuses (fewer than 3 masters, e.g. 1 master + 1 replica for a
        benchmark): even slot ranges to the masters, MEET, then each replica REPLICATEs its master."""
        half = len(self.ports) // 2
        masters, replicas = self.ports[:half], self.ports[half:]
        for index, port in enumerate(masters):
            first, last = index * SLOTS // half, (index + 1) * SLOTS // half - 1
            self.client(port).execute_command("CLUSTER ADDSLOTSRANGE", first, last)
        for port in self.ports[1:]:
            self.client(port).execute_command("CLUSTER MEET", HOST, self.ports[0])
        deadline = time.monotonic() + timeout
        while any(int(self._info(port).get("cluster_known_nodes", 0)) < len(self.ports) for port in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not meet:\n" + self.status())
            time.sleep(0.1)
        for master, replica in zip(masters, replicas):
            master_id = self.client(master).execute_command("CLUSTER MYID")
            self.client(replica).execute_command("CLUSTER REPLICATE", master_id)

    def _formed(self) -> bool:
        try:
            return int(self.client(self.ports[0]).cluster("info").get("cluster_slots_assigned", 0)) == SLOTS
        except redis.RedisError:
            return False

    def _info(self, port: int) -> dict:
        try:
            return self.client(port).cluster("info")
        except redis.RedisError:
            return {}

    def live_ports(self) -> list[int]:
        return [port for port in self.ports if answers(HOST, port)]

    def is_ok(self, replicas: bool = True) -> bool:
        """Every live node says ok and serves every slot; with `replicas`, every master has a replica in sync."""
        live = self.live_ports()
        if not live:
            return False
        for port in live:
            info = self._info(port)
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != SLOTS:
                return False
        try:
            return not replicas or all(self._replica_online(port) for port in self.masters())
        except redis.RedisError:
            return False

    def _replica_online(self, master: int) -> bool:
        """A replica of `master` has finished its initial sync (WAIT counts only such replicas)."""
        info = self.client(master).info("replication")
        return any(isinstance(value, dict) and value.get("state") == "online"
                   for key, value in info.items() if key.startswith("slave"))

    def wait_ok(self, timeout: float = 60, replicas: bool | None = None) -> LocalCluster:
        """Wait until is_ok(); `replicas` defaults to whether every node is up."""
        if replicas is None:
            replicas = len(self.live_ports()) == len(self.ports)
        deadline = time.monotonic() + timeout
        while not self.is_ok(replicas):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster on {self.ports[0]}.. is not ok after {timeout:g}s:\n"
                                   + self.status())
            time.sleep(0.2)
        return self

    def _nodes(self) -> list[dict]:
        """CLUSTER NODES as one live node sees it: [{port, role, slots, master_port}], failed nodes left out."""
        for port in self.live_ports():
            try:
                raw = self.client(port).execute_command("CLUSTER NODES")
            except redis.RedisError:
                continue
            if isinstance(raw, dict):  # redis-py parses it: {"host:port@bus": {...}}
                rows = []
                for address, node in raw.items():
                    flags = node.get("flags", "")
                    if "fail" in flags.split(",") or not node.get("connected", True):
                        continue
                    rows.append({"id": node.get("node_id"), "port": int(address.split("@")[0].rsplit(":", 1)[1]),
                                 "role": "master" if "master" in flags else "replica",
                                 "master_id": node.get("master_id"), "slots": node.get("slots", [])})
                by_id = {row["id"]: row["port"] for row in rows}
                for row in rows:
                    row["master_port"] = by_id.get(row["master_id"])
                return rows
        return []

    def masters(self) -> list[int]:
        return sorted(node["port"] for node in self._nodes() if node["role"] == "master")

    def replicas(self) -> list[int]:
        return sorted(node["port"] for node in self._nodes() if node["role"] == "replica")

    def replica_of(self, master_port: int) -> list[int]:
        return sorted(node["port"] for node in self._nodes() if node.get("master_port") == master_port)

    def master_for_slot(self, key_or_slot: str | int) -> int:
        """The port of the master serving a slot (or a key's slot) now."""
        slot = key_or_slot if isinstance(key_or_slot, int) else key_slot(key_or_slot.encode())
        for port in self.live_ports():
            try:
                for start, end, master, *_ in self.client(port).execute_command("CLUSTER SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(master[1])
            except redis.RedisError:
                continue
        raise RuntimeError(f"no live node serves slot {slot}")

    def seed_url(self) -> str:
        """REDIS_URL for the cluster: the first three nodes as seeds."""
        return "redis://" + ",".join(f"{HOST}:{port}" for port in self.ports[:3])

    def flushall(self) -> None:
        for port in self.masters():
            self.client(port).flushall()

    def kill(self, port: int, signum: int = signal.SIGKILL) -> None:
        """Lose one node at once (SIGKILL, or e.g. SIGSTOP to freeze it)."""
        process = self.processes.get(port)
        if process is not None:
            process.send_signal(signum)
            if signum in (signal.SIGKILL, signal.SIGTERM):
                process.wait(10)
                self.processes.pop(port, None)
            return
        pid = self._pid(port)
        if pid:
            os.kill(pid, signum)

    def restart(self, port: int) -> None:
        """Start a node killed before; it rejoins the cluster with its nodes.conf (as a replica if it lost its
        master role meanwhile)."""
        self._start_node(port, self.daemonized)

    def _pid(self, port: int) -> int | None:
        pidfile = self._node_dir(port) / "redis.pid"
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, remove: bool = True) -> None:
        """Stop every node (SHUTDOWN NOSAVE; SIGKILL if it does not go) and, by default, remove the data dir."""
        for port in self.ports:
            process = self.processes.pop(port, None)
            try:
                self.client(port, timeout=1).shutdown(nosave=True)
            except redis.RedisError:
                pass  # gone already, or SHUTDOWN closed the connection as it should
            if process is not None:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
            elif answers(HOST, port) and self._pid(port):
                try:
                    os.kill(self._pid(port), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if remove:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def status(self) -> str:
        lines = []
        nodes = {node["port"]: node for node in self._nodes()}
        for port in self.ports:
            up = answers(HOST, port)
            info = self._info(port) if up else {}
            node = nodes.get(port, {})
            role = node.get("role", "?")
            detail = f" of {node['master_port']}" if role == "replica" and node.get("master_port") else ""
            lines.append(f"{HOST}:{port}  {'up' if up else 'down':4}  {role}{detail}  "
                         f"state={info.get('cluster_state', '-')} slots_ok={info.get('cluster_slots_ok', '-')}")
        return "\n".join(lines)


def start_cluster(base_port: int = DEFAULT_BASE_PORT, data_dir: Path | str = DEFAULT_DIR, masters: int = 3,
                  node_timeout_ms: int = NODE_TIMEOUT_MS, daemonize: bool = False) -> LocalCluster:
    """A running local cluster (nodes as children of this process unless `daemonize`)."""
    return LocalCluster(base_port, data_dir, masters, node_timeout_ms).start(daemonize=daemonize)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.redis_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    parser.add_argument("--dir", default=str(DEFAULT_DIR))
    parser.add_argument("--masters", type=int, default=3)
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.base_port, args.dir, args.masters)
    if args.action == "start":
        cluster.start(daemonize=True)
        print(cluster.status())
        print(f"REDIS_CLUSTER=true REDIS_URL={cluster.seed_url()}")
    elif args.action == "stop":
        cluster.stop()
        print(f"stopped the Redis Cluster on ports {cluster.ports[0]}-{cluster.ports[-1]}")
    else:
        print(cluster.status())
        return 0 if cluster.is_ok() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
