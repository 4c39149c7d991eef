"""`herald dev`: the whole local stack without Docker, kept in one folder.

The folder (HERALD_DEV_HOME, default ~/.local/share/herald/dev) holds the cluster's
certificates and data, Redis's append-only file, the captured mail, every component's
log and pid file, and the ports chosen at the first `up`, so a later `up` reuses them.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from herald_dev import build
from herald_dev.controlplane import ControlPlane
from herald_dev.servers import capture_service, redis_service
from herald_dev.services import Service, free_port, start_all, stop_all


def dev_home() -> Path:
    default = Path.home() / ".local" / "share" / "herald" / "dev"
    return Path(os.environ.get("HERALD_DEV_HOME", default))


@dataclass
class DevStack:
    home: Path

    def __post_init__(self) -> None:
        self.cluster = ControlPlane(self.home / "cluster")
        self.maildir = self.home / "mail"
        ports_file = self.home / "ports.json"
        if ports_file.exists():
            self.ports: dict[str, int] = json.loads(ports_file.read_text())
        else:
            self.home.mkdir(parents=True, exist_ok=True)
            self.ports = {"redis": free_port(), "smtp": free_port()}
            ports_file.write_text(json.dumps(self.ports))
        self.services: list[Service] = [
            *self.cluster.services,
            redis_service(self.home, self.ports["redis"]),
            capture_service(self.home, self.ports["smtp"], self.maildir),
        ]

    def up(self) -> None:
        if not build.is_built():
            print("building the control plane (the first time only; this takes a while)...",
                  flush=True)
            build.build()
        self.cluster.prepare()
        start_all(self.services, attached=False, timeout=120)

    def down(self) -> None:
        stop_all(self.services)

    def env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "HERALD_REDIS_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            "HERALD_SMTP_HOST": "127.0.0.1",
            "HERALD_SMTP_PORT": str(self.ports["smtp"]),
            "HERALD_CAPTURE_DIR": str(self.maildir),
        }

    def env_script(self) -> str:
        lines = [f"export {k}={shlex.quote(v)}" for k, v in self.env().items()]
        # The built kubectl and helm come first, so they match the cluster's version.
        lines.append(f'export PATH={shlex.quote(str(self.cluster.bin_dir))}:"$PATH"')
        return "\n".join(lines)

    def status_rows(self) -> list[tuple[str, str, str, str]]:
        """(component, state, pid, log) for each component."""
        rows = []
        for service in self.services:
            if service.healthy():
                state = "healthy"
            elif service.running():
                state = "running, not ready"
            else:
                state = "stopped"
            rows.append((service.name, state, str(service.pid() or "-"), str(service.log)))
        return rows
