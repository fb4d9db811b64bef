"""A private PostgreSQL on a free port, run as the ``postgres`` user with trust
authentication. Its postmaster is this suite's own child: a crash is a SIGKILL to that pid
(and to whatever of the server outlives it), and a restart runs crash recovery."""

from __future__ import annotations

from pathlib import Path

from support.clusters import Account, Cluster, PostgresServer, free_port, postgres_bin


class PrivatePostgres(Cluster):
    prefix = "axon-chaos-pg-"

    def __init__(self, database: str = "axon") -> None:
        account = Account("postgres")
        bin_dir = postgres_bin()
        super().__init__()
        account.own(self.dir)
        self.server = PostgresServer(self.dir / "server" / "data", free_port(), account, bin_dir)
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.server.port}/{database}"

    def _start(self) -> None:
        self.server.initdb("max_connections = 300\n")
        self.server.start()

    def kill(self) -> None:
        """A crash of the whole server, postmaster and backends."""
        self.server.kill()

    def restart(self) -> None:
        self.server.start()

    def logs(self) -> dict[str, Path]:
        return {"postgres": self.server.log}

    def _stop(self) -> None:
        self.server.discard()
