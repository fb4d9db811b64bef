"""Start real ``axon`` processes for end-to-end tests and wait until they are ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

READY_TIMEOUT_S = 180.0
SRC = str(Path(__file__).resolve().parents[2] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AxonProcess:
    """One ``axon`` process on a free port, with its output in a log file."""

    def __init__(
        self,
        args: list[str],
        *,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.args = args
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            # The processes run this checkout's code, whichever copy is installed.
            "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
            "AXON_DATA_DIR": str(data_dir),
            "AXON_SERVER__PORT": str(self.port),
            **(env or {}),
        }
        self.log_path = data_dir / f"axon-{args[0]}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> AxonProcess:
        """Start the process; with ``wait=False`` return at once (the caller starts several
        together and calls ``wait_ready`` on each)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "axon", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"axon {self.args} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"axon {self.args} not ready in time:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def run_axon(args: list[str], *, data_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """Run a one-shot ``axon`` command (e.g. ``db upgrade``) and return its output."""
    result = subprocess.run(
        [sys.executable, "-m", "axon", *args],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
            "AXON_DATA_DIR": str(data_dir),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"axon {args} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@contextmanager
def start_axon(
    args: list[str] | None = None,
    *,
    data_dir: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[AxonProcess]:
    process = AxonProcess(args or ["serve"], data_dir=data_dir, env=env).start()
    try:
        yield process
    finally:
        process.stop()
