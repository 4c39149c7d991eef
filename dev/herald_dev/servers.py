"""The ledger's Redis and the SMTP servers, as local services on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import redis

from herald_dev.services import Service

# What the contract requires of a ledger: acknowledged writes are on disk, nothing evicted.
LEDGER_REDIS_SETTINGS = {
    "appendonly": "yes",
    "appendfsync": "always",
    "maxmemory-policy": "noeviction",
}


def _which(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if not found:
        raise FileNotFoundError(
            f"{program} is not installed; `make setup` installs it (as root) from Debian")
    return found


def smtp_ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        return conn.recv(512).startswith(b"220")


def redis_service(workdir: Path, port: int, settings: dict[str, str] | None = None) -> Service:
    """A redis-server configured as a ledger (or with `settings` overriding that)."""
    data = workdir / "redis-data"
    data.mkdir(parents=True, exist_ok=True)
    options = {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(data),
        "save": "",
        "protected-mode": "yes",
        **LEDGER_REDIS_SETTINGS,
        **(settings or {}),
    }
    argv = [_which("redis-server")]
    for key, value in options.items():
        argv += [f"--{key}", value]
    return Service(
        name=f"redis-{port}" if settings else "redis",
        argv=argv,
        workdir=workdir,
        ready=lambda: bool(redis.Redis(port=port, socket_timeout=2).ping()),
    )


def capture_service(workdir: Path, port: int, maildir: Path, *, faults: bool = False,
                    extra: tuple[str, ...] = ()) -> Service:
    """The capture server (herald_dev.smtpserver); with faults, the fault-injecting one."""
    argv = [sys.executable, "-m", "herald_dev.smtpserver", "--port", str(port),
            "--dir", str(maildir), *extra]
    if faults:
        argv.append("--faults")
    return Service(
        name="smtp-faults" if faults else "smtp-capture",
        argv=argv,
        workdir=workdir,
        ready=lambda: smtp_ready(port),
    )


def smtp_sink_service(workdir: Path, port: int) -> Service:
    """Postfix's smtp-sink: accepts and discards every message, for load."""
    argv = [_which("smtp-sink"), f"127.0.0.1:{port}", "256"]
    if os.geteuid() == 0:
        # It refuses to run as root. Dropping to nobody before it starts (rather than with
        # its -u) keeps it dying with its parent: a change of user clears that signal.
        argv = [_which("setpriv"), "--reuid", "nobody", "--regid", "nogroup",
                "--clear-groups", "--pdeathsig", "KILL", *argv]
    return Service(name="smtp-sink", argv=argv, workdir=workdir, ready=lambda: smtp_ready(port),
                   program="smtp-sink")
