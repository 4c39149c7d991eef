"""Local server processes: start, probe, stop, read logs.

A service keeps its pid file and log in its work folder, so `herald dev down` in another
process finds what `herald dev up` started. Services started for a test run (attached)
also die with the process that started them, so an interrupted run leaves none behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as resp:
        return int(resp.status) == 200


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGKILL it when the parent dies, however it dies.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): reap it if we can.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


@dataclass
class Service:
    name: str
    argv: Sequence[str]
    workdir: Path
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    program: str = ""  # the name it runs under, when argv[0] is a wrapper that execs it

    @property
    def pidfile(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid) and self._is_ours(pid)

    def _is_ours(self, pid: int) -> bool:
        # A stale pid file may name a pid the system has since given to another program.
        # Some servers (redis) rewrite their title, so compare the program's name only.
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            return False
        expected = self.program or os.path.basename(self.argv[0])
        return os.path.basename(title.split(" ")[0]) == expected

    def healthy(self) -> bool:
        try:
            return self.running() and self.ready()
        except Exception:
            return False

    def start(self, *, attached: bool) -> None:
        """Start the process; attached ones are killed when this process dies."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.workdir,
                start_new_session=True,  # its own process group, spared our Ctrl-C
                preexec_fn=_die_with_parent if attached else None,
            )
        self.pidfile.write_text(str(proc.pid))

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pid = self.pid()
        while time.monotonic() < deadline:
            if pid is None or not pid_alive(pid):
                raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """Stop the process group: the stop signal, then SIGKILL after the grace period."""
        pid = self.pid()
        if pid is not None and pid_alive(pid) and self._is_ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, self.stop_signal)
            deadline = time.monotonic() + grace
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"(no log at {self.log})"
        return "\n".join([f"--- last {lines} lines of {self.log}", *text[-lines:]])


def start_all(services: Sequence[Service], *, attached: bool, timeout: float = 60.0) -> None:
    """Start, in order, each service that is not already healthy, waiting until it is ready."""
    for service in services:
        if service.healthy():
            continue
        service.stop()
        service.start(attached=attached)
        service.wait_ready(timeout)


def stop_all(services: Sequence[Service]) -> None:
    for service in reversed(services):
        service.stop()
