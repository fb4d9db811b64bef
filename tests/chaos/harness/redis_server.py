"""A private Redis on a free port, configured as Axon requires of a Redis without a replica:
an append-only file synced on every write, so a restart after a crash (kill -9) comes back
with every acknowledged write (token streams, leases, the completion log)."""

from __future__ import annotations

from pathlib import Path

from support.clusters import Cluster, RedisServer, free_port, redis_command


class PrivateRedis(Cluster):
    prefix = "axon-chaos-redis-"

    def __init__(self) -> None:
        super().__init__()
        self.server = RedisServer(
            free_port(),
            self.dir / "data",
            ["--appendonly", "yes", "--appendfsync", "always"],
        )

    @property
    def url(self) -> str:
        return self.server.url

    def _start(self) -> None:
        self.server.start()

    def kill(self) -> None:
        """A crash: SIGKILL; what was acknowledged is in the append-only file."""
        self.server.kill()

    def restart(self) -> None:
        """Start it again on the same port, from its append-only file."""
        self.server.start()

    def kill_clients(self) -> int:
        """Cut every ordinary client connection (the servers' pools reconnect on their own);
        returns how many were cut."""
        cut = redis_command(self.server.port, "CLIENT", "KILL", "TYPE", "normal")
        return int(cut) if isinstance(cut, int) else 0

    def logs(self) -> dict[str, Path]:
        return {"redis": self.server.log}

    def _stop(self) -> None:
        self.server.kill()
