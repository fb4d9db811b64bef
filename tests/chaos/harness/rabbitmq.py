"""A private single-node RabbitMQ on free ports, run as the ``rabbitmq`` user on a directory
it owns. The Erlang VM's pid comes from the pid file the start script writes: crashes and
pauses are signals to that pid, never to a process found by name."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from support.server import free_port
from support.services import missing

from .children import Child, pid_alive

SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
USER = "rabbitmq"
#: The rabbitmq user's home: its Erlang cookie lets rabbitmqctl talk to every node.
HOME = "/var/lib/rabbitmq"


class PrivateRabbitMQ:
    def __init__(self, root: Path) -> None:
        if not SCRIPT.exists() or shutil.which("rabbitmqctl") is None:
            missing("rabbitmq-server is needed for the private RabbitMQ")
        self.dir = root / "rabbitmq"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"axon-chaos-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        shutil.chown(self.dir, USER, USER)
        for path in self.dir.iterdir():
            shutil.chown(path, USER, USER)
        self._child: Child | None = None
        self._broker: int | None = None
        atexit.register(self._kill_broker)

    def _env(self) -> dict[str, str]:
        d = str(self.dir)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": HOME,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{d}/rabbit.pid",
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
        }

    def start(self) -> None:
        """Start the broker (again, after a crash: same ports, same data) and wait until it
        takes connections."""
        pid_file = self.dir / "rabbit.pid"
        pid_file.unlink(missing_ok=True)
        self._child = Child(
            [str(SCRIPT)],
            log_path=self.dir / "server.log",
            env=self._env(),
            cwd=self.dir,
            user=USER,
        ).start()
        deadline = time.monotonic() + 120
        while not (self._accepts() and pid_file.exists()):
            if not self._child.running() or time.monotonic() > deadline:
                raise RuntimeError(f"the private RabbitMQ did not start; see {self.dir}")
            time.sleep(0.2)
        self._broker = int(pid_file.read_text().split()[0])
        self.ctl("await_startup", timeout=120)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def ctl(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args} failed: {result.stdout} {result.stderr}")
        return result.stdout

    def _signal_broker(self, sig: int) -> None:
        assert self._broker is not None, "not started"
        os.kill(self._broker, sig)

    def kill(self) -> None:
        """A crash: SIGKILL to the Erlang VM; its start script then exits by itself."""
        self._signal_broker(signal.SIGKILL)
        assert self._child is not None
        self._child.wait(30)
        self._broker = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung broker)."""
        self._signal_broker(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_broker(signal.SIGCONT)

    def stop_app(self) -> None:
        """The broker refuses every connection while the VM stays up (a quick restart)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")

    def _kill_broker(self) -> None:
        if self._broker is not None and pid_alive(self._broker):
            os.kill(self._broker, signal.SIGKILL)
        if self._child is not None:
            self._child.kill()

    def stop(self) -> None:
        if self._broker is not None and pid_alive(self._broker):
            os.kill(self._broker, signal.SIGCONT)
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout=60)
        if self._child is not None and not self._child.wait(30):
            self._kill_broker()
        self._kill_broker()
        self._broker = None
