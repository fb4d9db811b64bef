"""A RabbitMQ cluster for failure tests (``RabbitCluster``): three nodes by default, or one
(a private broker that a test may crash, pause or stop)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .base import (
    LOCALHOST,
    STARTUP_TIMEOUT_S,
    Account,
    Cluster,
    ClusterError,
    ClusterUnavailable,
    Service,
    free_port,
    port_open,
    run_tool,
    tail,
    wait_for,
)

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class RabbitCluster(Cluster):
    """``size`` RabbitMQ nodes (three by default) in one cluster, on loopback.

    Nodes are addressed by index, 0 to size-1. Node names are unique per run
    (``axonchaos-<tag>-<n>@localhost``), and the cluster has an Erlang cookie of its own,
    so no command aimed at it can reach the shared broker, nor the other way round.

    The nodes boot in parallel and form the cluster while booting: node 0 starts alone,
    and the others name it as their one peer through classic peer discovery, retrying
    until it is up. That is half the time of booting three single nodes and then joining
    two of them with ``stop_app``/``join_cluster``/``start_app`` (measured on two cores);
    the join commands remain the fallback for a node that came up on its own.

    On a loaded machine a node joining while node 0 is still creating its tables now and
    then fails its schema integrity check and stops. A failed boot is therefore tried once
    more from scratch (every node killed, new names, ports and directories), node 0 first
    this time and the others once it listens, before the start gives up.
    """

    prefix = "axon-chaos-rabbit-"

    def __init__(self, size: int = 3) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        for tool in ("rabbitmq-server", "rabbitmqctl", "rabbitmq-diagnostics"):
            if not (RABBITMQ_BIN / tool).exists():
                raise ClusterUnavailable(f"{RABBITMQ_BIN / tool} is not installed")
        self.account = Account("rabbitmq")
        super().__init__()
        self.account.own(self.dir)
        self.size = size
        #: Boots tried, and why each one before the last failed.
        self.boots = 0
        self.failed_boots: list[str] = []
        self._layout()

    def _layout(self) -> None:
        """Names, ports and directories of a fresh boot."""
        self.boots += 1
        tag = secrets.token_hex(4)
        self.root = self.account.mkdir(self.dir / f"boot-{self.boots}")
        self.node_names = [f"axonchaos-{tag}-{n + 1}@localhost" for n in range(self.size)]
        self.amqp_ports = [free_port() for _ in range(self.size)]
        self.dist_ports = [free_port() for _ in range(self.size)]
        self.home = self.root / "home"
        self._nodes: list[Service] = []

    @property
    def urls(self) -> list[str]:
        return [self.url(index) for index in range(self.size)]

    def url(self, index: int) -> str:
        return f"amqp://guest:guest@{LOCALHOST}:{self.amqp_ports[index]}/"

    def node_dir(self, index: int) -> Path:
        return self.root / f"node-{index + 1}"

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            # Erlang reads the cookie from $HOME/.erlang.cookie: this cluster's own.
            "HOME": str(self.home),
            # Instead of the machine's rabbitmq-env.conf, which names the shared node.
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            **(extra or {}),
        }

    def _node_env(self, index: int) -> dict[str, str]:
        node = self.node_dir(index)
        return self._env(
            {
                "RABBITMQ_NODENAME": self.node_names[index],
                "RABBITMQ_NODE_PORT": str(self.amqp_ports[index]),
                "RABBITMQ_DIST_PORT": str(self.dist_ports[index]),
                "RABBITMQ_MNESIA_BASE": str(node / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(node / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(node / "rabbit.pid"),
                "RABBITMQ_CONFIG_FILE": str(node / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node / "advanced.config"),
            }
        )

    def _prepare(self) -> None:
        account = self.account
        account.mkdir(self.home)
        account.write(self.home / ".erlang.cookie", secrets.token_hex(20).upper(), 0o400)
        # Keeps Erlang distribution on loopback, as the machine's own file does.
        account.write(
            self.root / "rabbitmq-env.conf",
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n',
        )
        for index in range(self.size):
            node = account.mkdir(self.node_dir(index))
            account.mkdir(node / "log")
            account.write(node / "enabled_plugins", "[].\n")
            conf = f"listeners.tcp.local = {LOCALHOST}:{self.amqp_ports[index]}\n"
            if index > 0:
                conf += (
                    "cluster_formation.peer_discovery_backend = classic_config\n"
                    f"cluster_formation.classic_config.nodes.1 = {self.node_names[0]}\n"
                    # Peer discovery waits up to a minute at random before it looks, to
                    # stagger nodes that could race to form a cluster; these cannot (only
                    # node 0 forms one), so they look at once and retry until it is up.
                    "cluster_formation.randomized_startup_delay_range.min = 0\n"
                    "cluster_formation.randomized_startup_delay_range.max = 1\n"
                    "cluster_formation.discovery_retry_limit = 240\n"
                    "cluster_formation.discovery_retry_interval = 500\n"
                )
            account.write(node / "rabbitmq.conf", conf)
            self._nodes.append(
                Service(
                    [str(RABBITMQ_BIN / "rabbitmq-server")],
                    log=node / "stdout.log",
                    env=self._node_env(index),
                    cwd=node,
                    account=account,
                )
            )

    def _start(self) -> None:
        try:
            self._boot(staggered=False)
        except (ClusterError, subprocess.TimeoutExpired) as first:
            self.failed_boots.append(str(first))
            self._stop()
            self._layout()
            self._boot(staggered=True)

    def _boot(self, *, staggered: bool) -> None:
        self._prepare()
        self._nodes[0].start()
        if staggered:
            self._wait_listening(0, STARTUP_TIMEOUT_S)
        for node in self._nodes[1:]:
            node.start()
        for index in range(self.size):
            self._wait_listening(index, STARTUP_TIMEOUT_S)
        if self.size == 1:
            return
        missing = set(self.node_names) - set(self.running_nodes(0))
        if missing:
            # A node that did not find node 0 in time started on its own: join it now.
            def join(name: str) -> None:
                index = self.node_names.index(name)
                self.ctl(index, "stop_app")
                self.ctl(index, "join_cluster", self.node_names[0])
                self.ctl(index, "start_app")

            with ThreadPoolExecutor(len(missing)) as pool:
                list(pool.map(join, sorted(missing)))
            self._wait_cluster(STARTUP_TIMEOUT_S)

    def _wait_listening(self, index: int, timeout: float) -> None:
        node = self._nodes[index]

        def up() -> bool:
            # A failed boot says so at once, while the VM may take a while to halt.
            if not node.running() or "BOOT FAILED" in node.log.read_text(errors="replace"):
                raise ClusterError(
                    f"RabbitMQ node {self.node_names[index]} failed to boot{tail(node.log)}"
                    f"{tail(self._log_file(index))}"
                )
            # The AMQP listener opens among the last boot steps, after the node has joined
            # its cluster and synced its tables.
            return port_open(self.amqp_ports[index])

        wait_for(
            up,
            timeout=timeout,
            interval=0.2,
            what=f"RabbitMQ node {self.node_names[index]}",
            log=self._log_file(index),
        )

    def _log_file(self, index: int) -> Path:
        return self.node_dir(index) / "log" / f"{self.node_names[index]}.log"

    def _wait_cluster(self, timeout: float) -> None:
        wait_for(
            lambda: set(self.running_nodes(0)) == set(self.node_names),
            timeout=timeout,
            interval=0.5,
            what="every RabbitMQ node to be running in one cluster",
        )

    def ctl(self, index: int, *args: str, tool: str = "rabbitmqctl", check: bool = True) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` (or another CLI tool) against node ``index``."""
        result = run_tool(
            [str(RABBITMQ_BIN / tool), "-n", self.node_names[index], *args],
            account=self.account,
            env=self._env(),
            cwd=self.home,
            timeout=120,
            check=check,
        )
        return result.stdout

    def running_nodes(self, index: int) -> list[str]:
        """The cluster's running nodes as node ``index`` sees them ([] if it cannot tell)."""
        try:
            status = json.loads(self.ctl(index, "cluster_status", "--formatter", "json"))
        except (ClusterError, ValueError, subprocess.TimeoutExpired):
            return []
        return [str(name) for name in status.get("running_nodes", [])]

    def queue_leader(self, queue: str, index: int = 0) -> int | None:
        """The index of the node that leads quorum queue ``queue``, as node ``index`` sees
        it (None if it cannot tell)."""
        try:
            queues = json.loads(
                self.ctl(index, "list_queues", "name", "leader", "--formatter", "json")
            )
        except (ClusterError, ValueError, subprocess.TimeoutExpired):
            return None
        for entry in queues:
            if entry.get("name") == queue and entry.get("leader") in self.node_names:
                return self.node_names.index(entry["leader"])
        return None

    def beam_pid(self, index: int) -> int | None:
        """The Erlang VM's pid, from the node's pid file, while it is alive."""
        try:
            pid = int((self.node_dir(index) / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        # A pid file left by a node that died on its own may name a reused pid: only a
        # process this node's start script started is taken.
        return pid if pid in self._nodes[index].tree() else None

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index``'s Erlang VM, then the start script that waited on it."""
        pid = self.beam_pid(index)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        # The script traps signals and would try a clean stop; it has nothing left to stop.
        self._nodes[index].kill()
        with contextlib.suppress(OSError):
            (self.node_dir(index) / "rabbit.pid").unlink()

    def restart_node(self, index: int, *, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start a killed node again (same name, ports and data) and wait until it has
        rejoined and listens."""
        if self._nodes[index].running():
            raise ClusterError(f"node {self.node_names[index]} is running")
        self._nodes[index].start()
        self._wait_listening(index, timeout)

    def _signal_beam(self, index: int, sig: int) -> None:
        pid = self.beam_pid(index)
        if pid is None:
            raise ClusterError(f"node {self.node_names[index]} is not running")
        os.kill(pid, sig)

    def pause_node(self, index: int) -> None:
        """SIGSTOP node ``index``'s Erlang VM: connections stay open, nothing answers."""
        self._signal_beam(index, signal.SIGSTOP)

    def resume_node(self, index: int) -> None:
        self._signal_beam(index, signal.SIGCONT)

    def stop_app(self, index: int) -> None:
        """Stop the broker on node ``index`` while its VM stays up: every connection to it
        is refused (a quick restart)."""
        self.ctl(index, "stop_app")

    def start_app(self, index: int) -> None:
        self.ctl(index, "start_app")
        self.ctl(index, "await_startup")

    def memory_alarm_active(self, index: int) -> bool:
        """Whether node ``index`` has raised a resource alarm."""
        result = run_tool(
            [
                str(RABBITMQ_BIN / "rabbitmq-diagnostics"),
                "-n", self.node_names[index], "check_local_alarms",
            ],
            account=self.account,
            env=self._env(),
            cwd=self.home,
            timeout=60,
            check=False,
        )  # fmt: skip
        return result.returncode != 0

    def set_memory_alarm(self, index: int, on: bool, *, wait: bool = True) -> None:
        """Raise (or clear) node ``index``'s memory alarm by moving its high watermark.

        While it is raised, publishers on every node of the cluster are blocked (RabbitMQ
        makes resource alarms cluster-wide) and consumers carry on. The watermark is not
        saved: a restarted node is back at the default 0.4."""
        self.ctl(index, "set_vm_memory_high_watermark", "0.0000001" if on else "0.4")
        if wait:
            wait_for(
                lambda: self.memory_alarm_active(index) == on,
                timeout=30,
                interval=0.5,
                what=f"the memory alarm on {self.node_names[index]} to be {on}",
            )

    def logs(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for index in range(len(self._nodes)):
            found[f"rabbitmq-{index + 1}"] = self._log_file(index)
            found[f"rabbitmq-{index + 1}-stdout"] = self._nodes[index].log
        return found

    def _stop(self) -> None:
        for node in self._nodes:
            node.kill()
