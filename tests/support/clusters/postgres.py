"""PostgreSQL for failure tests: one server on a data directory (``PostgresServer``), and a
primary with a streaming standby (``PostgresPair``)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
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
    run_tool,
    tail,
    wait_for,
)


def postgres_bin() -> Path:
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "postgres").exists():
        return preferred
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not versions:
        raise ClusterUnavailable("PostgreSQL server binaries are not installed")
    return versions[-1].parent


#: Settings every server here runs with.
BASE_SETTINGS = (
    f"listen_addresses = '{LOCALHOST}'\n"
    # Process kills are the faults here, not power cuts: the OS keeps every write, so
    # skipping fsync is safe and makes start-up and checkpoints fast.
    "fsync = off\n"
)


class PostgresServer:
    """One postmaster on ``data`` and ``port``, run as ``account``, started again on the
    same directory and port after a kill (crash recovery runs then).

    The postmaster is started as a child of this process, not through ``pg_ctl start``,
    which leaves it to init: where init does not reap, a SIGKILLed postmaster stays a zombie
    whose pid, still in ``postmaster.pid``, makes the next start refuse to run.
    """

    def __init__(self, data: Path, port: int, account: Account, bin_dir: Path) -> None:
        self.data = data
        self.port = port
        self.account = account
        self.bin = bin_dir
        self.log = data.parent / "postgres.log"
        self._service: Service | None = None

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}

    def tool(self, name: str, *args: str, timeout: float = 60.0) -> str:
        """Run one of PostgreSQL's programs as the server's account; its output."""
        return run_tool(
            [str(self.bin / name), *args],
            account=self.account,
            env=self.env(),
            cwd=self.data.parent,
            timeout=timeout,
        ).stdout

    def initdb(self, settings: str = "") -> None:
        """Create the data directory, with ``BASE_SETTINGS`` and ``settings`` appended to
        its ``postgresql.conf``."""
        self.account.mkdir(self.data.parent)
        self.tool(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            timeout=120,
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(BASE_SETTINGS + settings)

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start ``postgres`` and wait until it accepts connections (as a primary, or as a
        hot standby)."""
        if self.running():
            raise ClusterError(f"postgres on {self.data} is running")
        # The socket lives beside the data directory, not in it, so a base backup does not
        # copy it, and nowhere near the shared server's /var/run/postgresql.
        sockets = self.account.mkdir(self.data.parent / "sockets")
        argv = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        service = self._service = Service(
            [*argv, "-k", str(sockets)],
            log=self.log,
            env=self.env(),
            cwd=self.data.parent,
            account=self.account,
        )
        service.start()

        def ready() -> bool:
            if not service.running():
                raise ClusterError(f"postgres on {self.data} exited{tail(service.log)}")
            # The postmaster's status line in its lock file, as pg_ctl -w reads it; the
            # file must be this postmaster's, not the one a killed server left behind.
            lines = self._lock_file()
            return (
                len(lines) > 7
                and lines[0].strip() == str(service.pid)
                and lines[7].strip() in ("ready", "standby")
            )

        wait_for(ready, timeout=timeout, what=f"postgres on {self.data}", log=self.log)

    def _lock_file(self) -> list[str]:
        try:
            return (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        service = self._service
        return service.pid if service is not None and service.running() else None

    def running(self) -> bool:
        return self.pid is not None

    def kill(self) -> None:
        """SIGKILL the postmaster, then whatever of the server is still alive.

        Killing the postmaster alone would leave its backends serving open connections for
        a moment and holding the shared memory, which stops a restart; a crashed host
        leaves nothing behind either.
        """
        pid = self.pid
        if pid is None or self._service is None:
            raise ClusterError(f"postgres on {self.data} is not running")
        os.kill(pid, signal.SIGKILL)
        self._service.kill()

    def stop(self) -> None:
        """A clean stop (``pg_ctl stop -m fast``)."""
        self.tool("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))
        if self._service is not None:
            self._service.kill()

    def discard(self) -> None:
        """Kill it if it runs (at teardown)."""
        if self._service is not None:
            self._service.kill()

    def sql(self, query: str, *, database: str = "postgres") -> str:
        """Run one statement with psql and return its unaligned output."""
        return self.tool(
            "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", LOCALHOST, "-p", str(self.port), "-U", "postgres",
            "-d", database, "-c", query,
            timeout=30,
        ).strip()  # fmt: skip


class PostgresPair(Cluster):
    """A PostgreSQL primary and a hot standby streaming from it, on loopback with trust auth.

    ``primary`` and ``standby`` name the two servers by how they started; after
    ``promote_standby`` the standby is the writable one and ``dsn`` (multi-host, read-write)
    finds it. Restarting the old primary after a promotion gives two writable servers: it
    does not rejoin as a standby (that needs ``pg_rewind``).

    With ``synchronous`` a commit on the primary returns only once the standby has it (as
    in a Multi-AZ database service), so a promoted standby holds every acknowledged write.
    Only the primary waits for a standby: once promoted, the standby does not.
    """

    prefix = "axon-chaos-pg-"

    def __init__(self, *, database: str = "postgres", synchronous: bool = False) -> None:
        self.bin = postgres_bin()
        self.account = Account("postgres")
        super().__init__()
        self.account.own(self.dir)
        self.database = database
        self.synchronous = synchronous
        self.primary = PostgresServer(
            self.dir / "primary" / "data", free_port(), self.account, self.bin
        )
        self.standby = PostgresServer(
            self.dir / "standby" / "data", free_port(), self.account, self.bin
        )
        self._lock = threading.RLock()
        self._restart: threading.Timer | None = None
        self.promoted = False

    @property
    def primary_port(self) -> int:
        return self.primary.port

    @property
    def standby_port(self) -> int:
        return self.standby.port

    @property
    def primary_data(self) -> Path:
        return self.primary.data

    @property
    def standby_data(self) -> Path:
        return self.standby.data

    # -- addresses

    def dsn_for(self, port: int, database: str | None = None) -> str:
        return f"postgresql://postgres@{LOCALHOST}:{port}/{database or self.database}"

    @property
    def primary_dsn(self) -> str:
        return self.dsn_for(self.primary_port)

    @property
    def standby_dsn(self) -> str:
        return self.dsn_for(self.standby_port)

    @property
    def dsn(self) -> str:
        """Both servers in one libpq/asyncpg DSN that connects to whichever accepts writes."""
        return (
            f"postgresql://postgres@{LOCALHOST}:{self.primary_port},"
            f"{LOCALHOST}:{self.standby_port}/{self.database}?target_session_attrs=read-write"
        )

    @property
    def sqlalchemy_url(self) -> str:
        """The same for SQLAlchemy's asyncpg dialect, which spells hosts as repeated
        ``host`` query parameters."""
        return (
            f"postgresql+asyncpg://postgres@/{self.database}"
            f"?host={LOCALHOST}:{self.primary_port}&host={LOCALHOST}:{self.standby_port}"
            "&target_session_attrs=read-write"
        )

    # -- plumbing

    def sql(self, port: int, query: str, *, database: str | None = None) -> str:
        """Run one statement with psql on ``port`` and return its unaligned output."""
        server = self.primary if port == self.primary_port else self.standby
        return server.sql(query, database=database or self.database)

    def _try_sql(self, port: int, query: str) -> str | None:
        try:
            return self.sql(port, query)
        except (ClusterError, subprocess.TimeoutExpired):
            return None

    def postmaster_pid(self, data: Path) -> int | None:
        """The postmaster's pid while it runs, else None."""
        return (self.primary if data == self.primary.data else self.standby).pid

    def _start(self) -> None:
        self.account.mkdir(self.standby_data.parent)
        self.primary.initdb(
            "wal_level = replica\n"
            "hot_standby = on\n"
            "max_wal_senders = 10\n"
            # Enough WAL kept for a standby that was cut off for a while to catch up.
            "wal_keep_size = 256MB\n"
            # A standby that lost its primary retries every half second, not every 5 s.
            "wal_retrieve_retry_interval = 500ms\n"
            "max_connections = 100\n"
        )
        self.primary.start()
        if self.database != "postgres":
            # Created before the base backup, so the standby has it too.
            self.primary.sql(f'CREATE DATABASE "{self.database}"')
        # -R writes standby.signal and primary_conninfo; the settings above come along.
        self.primary.tool(
            "pg_basebackup", "-h", LOCALHOST, "-p", str(self.primary_port), "-U", "postgres",
            "-D", str(self.standby_data), "-R", "-X", "stream", "--checkpoint=fast",
            "--no-sync",
        )  # fmt: skip
        self.standby.start()
        self.wait_streaming(STARTUP_TIMEOUT_S)
        if self.synchronous:
            # In the primary's own postgresql.auto.conf, after the base backup: the standby
            # must not wait for a standby of its own once promoted.
            self.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            self.primary.sql("SELECT pg_reload_conf()")
            wait_for(
                lambda: (
                    self._try_sql(self.primary_port, "SELECT sync_state FROM pg_stat_replication")
                    == "sync"
                ),
                timeout=30,
                what="the standby to be synchronous",
            )

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until the standby streams WAL from the primary."""
        wait_for(
            lambda: (
                self._try_sql(self.standby_port, "SELECT status FROM pg_stat_wal_receiver")
                == "streaming"
            ),
            timeout=timeout,
            what="the standby to stream from the primary",
            log=self.standby.log,
        )

    # -- faults

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster, then whatever of the server is still alive."""
        with self._lock:
            self.primary.kill()

    def promote_standby(self) -> None:
        """Promote the standby (``pg_ctl promote``) and wait until it accepts writes."""
        self.standby.tool("pg_ctl", "promote", "-w", "-t", "60", "-D", str(self.standby_data))
        self.promoted = True

    def stop_primary(self, duration: float | None = None) -> None:
        """Stop the primary cleanly (``pg_ctl stop -m fast``); with ``duration``, start it
        again that many seconds later, in the background, so a test can watch clients ride
        out the outage. ``start_primary`` ends the outage early."""
        with self._lock:
            self._cancel_restart()
            self.primary.stop()
            if duration is not None:
                self._restart = threading.Timer(duration, self._scheduled_start)
                self._restart.daemon = True
                self._restart.start()

    def start_primary(self) -> None:
        """Start the primary if it is down and wait until it accepts connections."""
        with self._lock:
            self._cancel_restart()
            if self.closed or self.primary.running():
                return
            self.primary.start()

    def _scheduled_start(self) -> None:
        with self._lock:
            self._restart = None
            self.start_primary()

    def _cancel_restart(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None

    def logs(self) -> dict[str, Path]:
        return {"postgres-primary": self.primary.log, "postgres-standby": self.standby.log}

    def _stop(self) -> None:
        with self._lock:
            self._cancel_restart()
            for server in (self.primary, self.standby):
                server.discard()
