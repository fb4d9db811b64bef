"""Debian's nginx for end-to-end tests, running the shipped site (``deploy/nginx/axon.conf``)
with only its addresses changed: the upstream's ``server`` lines name the processes a test
started, and its ``listen`` lines a free port on loopback. Everything else (timeouts,
buffering, headers, failover) is the file as shipped. nginx runs in the foreground with its
own prefix, temporary directories, pid file and logs in the test's directory."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from support.server import free_port
from support.services import missing

SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "axon.conf"
UPSTREAM = "axon_gateways"
READY_TIMEOUT_S = 20.0

# Each access-log line: what the request was, how it ended, and every upstream it was sent
# to (nginx lists them comma-separated when it passed the request on to the next one).
_LOG_FORMAT = "$request_method $uri $status [$upstream_addr] [$upstream_status]"
_LOG_LINE = re.compile(r"(\S+) (\S+) (\d+) \[(.*)\] \[(.*)\]")


def nginx_binary() -> str:
    """The ``nginx`` executable; skips locally (fails in CI) when it is not installed."""
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if path is None:
        missing("nginx is not installed (Debian's package: scripts/install-nginx.sh)")
    return path


def site_for_test(text: str, port: int, upstreams: Sequence[str]) -> str:
    """The site ``text`` listening on ``127.0.0.1:port`` in front of ``upstreams``
    (``host:port`` each), each upstream server keeping the parameters of the first one
    (``max_fails`` ...). Raises ``ValueError`` when the file no longer has the shape this
    relies on, rather than testing something else."""
    block = re.search(rf"^upstream {UPSTREAM} \{{\n(.*?)^\}}", text, re.S | re.M)
    if block is None:
        raise ValueError(f"no `upstream {UPSTREAM} {{ ... }}` block at the start of a line")
    servers = re.findall(r"^[ \t]*server[ \t]+(\S+)([^;\n]*);[^\n]*\n", block[1], re.M)
    if not servers:
        raise ValueError(f"no server line in upstream {UPSTREAM}")
    params = servers[0][1]
    mine = "".join(f"    server {address}{params};\n" for address in upstreams)
    body = re.sub(r"^[ \t]*server[ \t]+\S+[^;\n]*;[^\n]*\n", "", block[1], flags=re.M)
    text = text[: block.start(1)] + mine + body + text[block.end(1) :]
    listens = re.compile(r"^[ \t]*listen[ \t]+[^;\n]*;[^\n]*\n", re.M)
    if not listens.search(text):
        raise ValueError("no listen line in the site")
    text = listens.sub("", text)
    # One listen line, in the first server block (the commented TLS lines stay comments).
    server = re.search(r"^server \{\n", text, re.M)
    if server is None:
        raise ValueError("no `server {` block at the start of a line")
    return text[: server.end()] + f"    listen 127.0.0.1:{port};\n" + text[server.end() :]


@dataclass(frozen=True)
class Logged:
    """One access-log line."""

    method: str
    path: str
    status: int
    #: Every upstream the request was sent to, in order (more than one: passed on).
    upstreams: list[str]
    upstream_statuses: list[str]


class Nginx:
    """nginx on a free loopback port, in front of ``upstreams`` (``host:port``), with its
    files in ``work_dir``. ``http_extra`` goes into the ``http`` block beside the site."""

    def __init__(self, work_dir: Path, upstreams: Sequence[str], *, http_extra: str = "") -> None:
        self.work_dir = work_dir
        self.upstreams = list(upstreams)
        self.http_extra = http_extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.site_path = work_dir / "axon.conf"
        self.config_path = work_dir / "nginx.conf"
        self.error_log = work_dir / "error.log"
        self.access_log = work_dir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        d = self.work_dir
        # As root, nginx would run its workers as `nobody`, who cannot write the temporary
        # directories made here.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"    {kind}_temp_path {d / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"{user}daemon off;\nworker_processes 1;\npid {d / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    log_format edge '{_LOG_FORMAT}';\n"
            f"    access_log {self.access_log} edge;\n"
            f"{temp}{self.http_extra}\n"
            f"    include {self.site_path};\n"
            "}\n"
        )

    def start(self) -> Nginx:
        binary = nginx_binary()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.site_path.write_text(site_for_test(SITE.read_text(), self.port, self.upstreams))
        self.config_path.write_text(self.config())
        command = [binary, "-p", str(self.work_dir), "-e", str(self.error_log)]
        check = subprocess.run(
            [*command, "-t", "-c", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{check.stderr}")
        self.proc = subprocess.Popen(
            [*command, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx not listening in time:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def logged(self) -> list[Logged]:
        """The access log so far (nginx writes a line when a request ends)."""
        out = []
        for line in self.access_log.read_text().splitlines():
            match = _LOG_LINE.fullmatch(line)
            if match is None:
                raise ValueError(f"unexpected access-log line {line!r}")
            method, path, status, addresses, statuses = match.groups()
            out.append(
                Logged(
                    method,
                    path,
                    int(status),
                    [a.strip() for a in addresses.split(",") if a.strip() not in ("", "-")],
                    [s.strip() for s in statuses.split(",") if s.strip() not in ("", "-")],
                )
            )
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM: a fast shutdown (SIGQUIT would wait for open streams to end).
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
