"""A local RabbitMQ cluster: three `rabbitmq-server` processes on loopback ports, joined into one cluster.

    python -m scripts.rabbitmq_cluster start [--fresh]   # modq1..3@localhost, AMQP 5701-5703, dist 25701-25703
    python -m scripts.rabbitmq_cluster status            # each node, whether it runs, the cluster it sees
    python -m scripts.rabbitmq_cluster url               # the failover URL for CELERY_BROKER_URL
    python -m scripts.rabbitmq_cluster stop

`make run-cluster` and the node-loss tests (tests/cluster/, `make test-cluster`) use it; the function API is
`start_rabbit_cluster(base_port, directory)` -> RabbitCluster (.urls, .failover_url(), .kill(node),
.restart(node), .leader_of(queue), .stop()).

Each node is the Debian package's `rabbitmq-server` (its scripts in /usr/lib/rabbitmq/bin, not the /usr/sbin
wrappers, which switch to the `rabbitmq` user and its cookie) with its own RABBITMQ_NODENAME, AMQP port
(RABBITMQ_NODE_PORT, bound to 127.0.0.1) and Erlang distribution port (RABBITMQ_DIST_PORT = AMQP port +
20000), everything it writes (RABBITMQ_MNESIA_BASE, RABBITMQ_LOG_BASE, RABBITMQ_PID_FILE, logs) under one
folder (var/rabbitmq-cluster/ by default) and no plugins (an empty RABBITMQ_ENABLED_PLUGINS_FILE). Nothing of
the machine's own RabbitMQ is read or touched: not its configuration (/etc/rabbitmq: RABBITMQ_CONF_ENV_FILE and
RABBITMQ_CONFIG_FILE point into the folder), not its node name (rabbit@...), not its port (5672), not its
Erlang cookie: the nodes and the CLI calls made here share a cookie of their own, `.erlang.cookie` in the
folder (HOME points there), made on first start. They register with the machine's epmd (port 4369), which an
Erlang node starts when none runs; it stays, as it does for any Erlang node.

The second and later nodes join the first with `rabbitmqctl stop_app; join_cluster <first>; start_app`. The
data stays in the folder: `start` after `stop` brings the same cluster back (all nodes start together, as a
cluster that was stopped must), `start --fresh` wipes it first.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.rabbitmq import answers

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "var" / "rabbitmq-cluster"
BASE_PORT = 5701
SIZE = 3
PREFIX = "modq"
DIST_PORT_OFFSET = 20000  # RABBITMQ_DIST_PORT = AMQP port + 20000 (RabbitMQ's own default pair: 5672 / 25672)
USER = PASSWORD = "guest"  # RabbitMQ's default user: it may connect from loopback only, which is all we use
START_TIMEOUT = 180


def rabbit_tool(name: str) -> str:
    """The package's own script (Debian: /usr/lib/rabbitmq/bin), else the one on PATH or in the sbin folders."""
    packaged = Path("/usr/lib/rabbitmq/bin") / name
    if packaged.exists():
        return str(packaged)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/lib/rabbitmq/sbin")
    if not found:
        raise RuntimeError(f"{name} not found: `apt-get install rabbitmq-server` (scripts/system_deps.sh)")
    return found


@dataclass(frozen=True)
class RabbitNode:
    index: int
    name: str  # the Erlang node name, e.g. modq1@localhost
    port: int  # AMQP
    dist_port: int  # Erlang distribution

    def url(self, vhost: str = "/") -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{vhost.lstrip('/') if vhost != '/' else '/'}"


class RabbitCluster:
    """`size` nodes named <prefix>1@localhost.. on AMQP ports base_port.. and dist ports base_port + 20000..;
    everything they write under `directory`."""

    def __init__(self, base_port: int = BASE_PORT, directory: Path | str = DEFAULT_DIR, size: int = SIZE,
                 prefix: str = PREFIX):
        self.dir = Path(directory).resolve()
        self.nodes = [RabbitNode(i, f"{prefix}{i + 1}@localhost", base_port + i, base_port + DIST_PORT_OFFSET + i)
                      for i in range(size)]
        self._processes: dict[str, subprocess.Popen] = {}

    # --- where things are -------------------------------------------------------------------------------

    def node(self, node: RabbitNode | str | int) -> RabbitNode:
        """A node by itself, its name (modq1@localhost or modq1), its index or its AMQP port."""
        if isinstance(node, RabbitNode):
            return node
        for candidate in self.nodes:
            if node in (candidate.name, candidate.name.split("@")[0], candidate.index, candidate.port):
                return candidate
        raise KeyError(f"no node {node!r} in this cluster")

    def pid_file(self, node: RabbitNode) -> Path:
        return self.dir / "pids" / f"{node.name}.pid"

    def log_file(self, node: RabbitNode) -> Path:
        return self.dir / "log" / f"{node.name}.log"

    @property
    def urls(self) -> list[str]:
        return [node.url() for node in self.nodes]

    def failover_url(self, vhost: str = "/", first: RabbitNode | str | int = 0) -> str:
        """Celery's broker failover list (`amqp://n1;amqp://n2;amqp://n3`), starting at `first`: a client
        connects to that node and, when it is gone, to the next one in the list."""
        start = self.node(first).index
        order = self.nodes[start:] + self.nodes[:start]
        return ";".join(node.url(vhost) for node in order)

    # --- the processes ----------------------------------------------------------------------------------

    def _tool_env(self) -> dict[str, str]:
        """What both the nodes and the CLI need: the folder's cookie (HOME), no machine configuration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(HOME=str(self.dir), RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
                   RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
                   RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
                   RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"), RABBITMQ_LOG_BASE=str(self.dir / "log"),
                   ERL_EPMD_ADDRESS="127.0.0.1",
                   # The CLI's own distribution ports: dist port + 10000 and up, clear of the machine's 35672-35682.
                   RABBITMQ_DIST_PORT=str(self.nodes[0].dist_port))
        return env

    def _node_env(self, node: RabbitNode) -> dict[str, str]:
        return {**self._tool_env(), "RABBITMQ_NODENAME": node.name, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(node.port), "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_PID_FILE": str(self.pid_file(node)), "RABBITMQ_LOGS": str(self.log_file(node)),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"}

    def _prepare(self) -> None:
        for sub in ("mnesia", "log", "pids"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.dir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("# empty on purpose: not the machine's /etc/rabbitmq one\n")
        (self.dir / "rabbitmq.conf").write_text("# empty on purpose: not the machine's /etc/rabbitmq one\n")

    def ctl(self, *args: str, node: RabbitNode | str | int = 0, tool: str = "rabbitmqctl", timeout: float = 60,
            check: bool = True) -> str:
        """`rabbitmqctl -n <node> -q <args>` (or rabbitmq-queues, ...) with the cluster's cookie; its stdout."""
        result = subprocess.run([rabbit_tool(tool), "-n", self.node(node).name, "-q", *args],
                                env=self._tool_env(), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)} on {self.node(node).name} failed "
                               f"({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def _pid(self, node: RabbitNode) -> int | None:
        try:
            return int(self.pid_file(node).read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self, node: RabbitNode | str | int) -> bool:
        """The node's OS process is alive (not whether the rabbit application has booted)."""
        pid = self._pid(self.node(node))
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return "beam" in _process_name(pid)

    def _launch(self, node: RabbitNode) -> None:
        if self.running(node):
            return
        if answers(port=node.port):
            raise RuntimeError(f"port {node.port} is taken by another AMQP server: choose another base port")
        self.pid_file(node).unlink(missing_ok=True)
        with open(self.dir / "log" / f"{node.name}.stdout", "ab") as out:
            # Its own session: a kill reaches the whole node (beam and its helpers), nothing of ours.
            self._processes[node.name] = subprocess.Popen(
                [rabbit_tool("rabbitmq-server")], env=self._node_env(node), cwd=self.dir, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_booted(self, node: RabbitNode, timeout: float = START_TIMEOUT) -> None:
        """`rabbitmqctl wait <pid file>`: the pid file, the Erlang node, then the rabbit application."""
        try:
            self.ctl("wait", str(self.pid_file(node)), "--timeout", str(int(timeout)), node=node,
                     timeout=timeout + 30)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log = self.log_file(node)
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{node.name} did not start: {exc}\n--- {log}:\n{tail}") from exc

    def cluster_nodes(self, node: RabbitNode | str | int = 0) -> tuple[list[str], list[str]]:
        """(members, running members) of the cluster as `node` sees it."""
        status = json.loads(self.ctl("cluster_status", "--formatter", "json", node=node))
        return sorted(status.get("disk_nodes", []) + status.get("ram_nodes", [])), sorted(status["running_nodes"])

    def start(self, fresh: bool = False) -> RabbitCluster:
        """Every node started together (a stopped cluster's nodes wait for one another), then the nodes
        that are not yet members join the first one. Returns once all run as one cluster."""
        if fresh:
            self.stop()
            shutil.rmtree(self.dir / "mnesia", ignore_errors=True)
        self._prepare()
        try:
            for node in self.nodes:
                self._launch(node)
            _in_parallel(self._wait_booted, self.nodes)
            first = self.nodes[0]
            for node in self.nodes[1:]:
                if node.name not in self.cluster_nodes(first)[0]:
                    self.ctl("stop_app", node=node)
                    self.ctl("join_cluster", first.name, node=node)
                    self.ctl("start_app", node=node)
            self.wait_running(self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_running(self, nodes: list[RabbitNode], timeout: float = 60) -> None:
        """Until the first live node of the cluster sees exactly `nodes` running."""
        want = sorted(node.name for node in nodes)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.cluster_nodes(nodes[0])[1] == want:
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster does not show {want} running after {timeout:g}s")
            time.sleep(0.5)

    def kill(self, node: RabbitNode | str | int) -> float:
        """SIGKILL the node (its whole process group: beam and its helpers), as a crash or an OOM kill
        would; returns time.monotonic() of the kill. Its data stays: restart() brings it back."""
        node = self.node(node)
        pid = self._pid(node)
        if pid is None or not self.running(node):
            raise RuntimeError(f"{node.name} is not running")
        pgid = os.getpgid(pid)
        killed_at = time.monotonic()
        if pgid != os.getpgid(0):  # never our own group (it is the node's own session when started here)
            os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.running(node) and time.monotonic() < deadline:
            time.sleep(0.05)
        process = self._processes.pop(node.name, None)
        if process is not None:
            process.wait(10)
        return killed_at

    def restart(self, node: RabbitNode | str | int, timeout: float = START_TIMEOUT) -> None:
        """Start a killed or stopped node again; it is still a member, so it rejoins the cluster by itself."""
        node = self.node(node)
        self._launch(node)
        self._wait_booted(node, timeout)

    def queue_info(self, queue: str, vhost: str = "/") -> dict:
        """{"leader": node name, "members": [node names], "online": [...]} of a quorum queue, asked of the
        first node that answers."""
        last = None
        for node in self.nodes:
            if not self.running(node):
                continue
            try:
                rows = json.loads(self.ctl("list_queues", "-p", vhost, "name", "leader", "members", "online",
                                           "--formatter", "json", node=node) or "[]")
            except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
                last = exc
                continue
            for row in rows:
                if row["name"] == queue:
                    return row
            raise KeyError(f"no queue {queue!r} in vhost {vhost!r}")
        raise RuntimeError(f"no node of the cluster answers: {last}")

    def leader_of(self, queue: str, vhost: str = "/") -> RabbitNode:
        """The node that leads the quorum queue now."""
        return self.node(self.queue_info(queue, vhost)["leader"])

    def add_vhost(self, vhost: str) -> str:
        """A vhost the guest user may use fully (definitions are cluster-wide: any node will do)."""
        node = next(node for node in self.nodes if self.running(node))
        self.ctl("add_vhost", vhost, node=node)
        self.ctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*", node=node)
        return vhost

    def stop(self, timeout: float = 60) -> None:
        """`rabbitmqctl stop` on every running node at once; SIGKILL for one that does not stop in time."""
        def stop_one(node: RabbitNode) -> None:
            if not self.running(node):
                return
            try:
                self.ctl("stop", node=node, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 15
            while self.running(node) and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.running(node):
                self.kill(node)
        _in_parallel(stop_one, self.nodes)
        for process in self._processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._processes.clear()

    def __enter__(self) -> RabbitCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "beam"  # no /proc: trust the pid file


def _in_parallel(function, items) -> None:
    """function(item) for every item, each on its own thread; the first error is raised once all ended."""
    errors: list[BaseException] = []

    def run(item):
        try:
            function(item)
        except BaseException as exc:  # noqa: BLE001 (raised below, in the caller's thread)
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def start_rabbit_cluster(base_port: int = BASE_PORT, directory: Path | str = DEFAULT_DIR, size: int = SIZE,
                         prefix: str = PREFIX, fresh: bool = True) -> RabbitCluster:
    """A running cluster of `size` nodes (fresh: no data from an earlier run in `directory`)."""
    return RabbitCluster(base_port, directory, size, prefix).start(fresh=fresh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.rabbitmq_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    parser.add_argument("--base-port", type=int, default=BASE_PORT)
    parser.add_argument("--dir", default=str(DEFAULT_DIR))
    parser.add_argument("--fresh", action="store_true", help="start: wipe the nodes' data first")
    args = parser.parse_args(argv)
    cluster = RabbitCluster(args.base_port, args.dir)
    if args.command == "url":
        print(cluster.failover_url())
    elif args.command == "start":
        print(f"starting {len(cluster.nodes)} RabbitMQ nodes ({', '.join(n.name for n in cluster.nodes)}) "
              f"in {cluster.dir}", flush=True)
        cluster.start(fresh=args.fresh)
        print(f"running as one cluster; use it with\n  CELERY_BROKER_URL='{cluster.failover_url()}'")
    elif args.command == "stop":
        cluster.stop()
        print("stopped")
    else:
        up = [node for node in cluster.nodes if cluster.running(node)]
        for node in cluster.nodes:
            state = ("running" if answers(port=node.port) else "booting") if node in up else "stopped"
            print(f"{node.name}  amqp 127.0.0.1:{node.port}  dist {node.dist_port}  {state}")
        if up:
            try:
                members, running = cluster.cluster_nodes(up[0])
                print(f"cluster members: {', '.join(members)}; running: {', '.join(running)}")
            except RuntimeError as exc:
                print(f"cluster status: {exc}")
        print(f"CELERY_BROKER_URL='{cluster.failover_url()}'")
        return 0 if len(up) == len(cluster.nodes) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
