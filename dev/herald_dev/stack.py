"""`herald dev`: the whole local stack without Docker, kept in one folder.

The folder (HERALD_DEV_HOME, default ~/.local/share/herald/dev) holds the cluster's
certificates and data, Redis's append-only file, the captured mail, every component's
log and pid file, and the ports chosen at the first `up`, so a later `up` reuses them.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from herald_dev import build
from herald_dev.controlplane import ControlPlane
from herald_dev.servers import capture_service, redis_service
from herald_dev.services import Service, free_port, http_ok, port_open, start_all, stop_all

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = [REPO / "manifests" / "crds", REPO / "manifests" / "rbac",
             REPO / "manifests" / "policies"]
OPERATOR_NAMESPACE, OPERATOR_ACCOUNT = "herald-system", "herald-operator"
SAMPLE_SMTP_PORT = 2525


def operator_service(workdir: Path, kubeconfig: Path, health_port: int, metrics_port: int,
                     redis_url: str) -> Service:
    """`herald operator` as a local process, on loopback."""
    return Service(
        name="herald-operator",
        argv=[sys.executable, "-m", "herald_dev.cli", "operator", "--listen", "127.0.0.1",
              "--health-port", str(health_port), "--metrics-port", str(metrics_port)],
        workdir=workdir,
        env={"KUBECONFIG": str(kubeconfig), "HERALD_JOB_REDIS_URL": redis_url},
        ready=lambda: http_ok(f"http://127.0.0.1:{health_port}/healthz"),
    )


def executor_service(workdir: Path, kubeconfig: Path) -> Service:
    """The local executor (herald_dev.executor): the node that runs job pods as processes."""
    alive = workdir / "executor.alive"
    return Service(
        name="local-executor",
        argv=[sys.executable, "-m", "herald_dev.executor", "--kubeconfig", str(kubeconfig),
              "--workdir", str(workdir)],
        workdir=workdir,
        ready=lambda: time.time() - alive.stat().st_mtime < 5,
    )


def dev_home() -> Path:
    default = Path.home() / ".local" / "share" / "herald" / "dev"
    return Path(os.environ.get("HERALD_DEV_HOME", default))


@dataclass
class DevStack:
    home: Path

    def __post_init__(self) -> None:
        self.cluster = ControlPlane(self.home / "cluster")
        self.maildir = self.home / "mail"
        # Ports are chosen once and kept, so a later `up` serves on the same ones.
        ports_file = self.home / "ports.json"
        self.ports: dict[str, int] = (
            json.loads(ports_file.read_text()) if ports_file.exists() else {})
        names = ("redis", "smtp", "operator_health", "operator_metrics")
        if any(name not in self.ports for name in names):
            if "smtp" not in self.ports and not port_open(SAMPLE_SMTP_PORT):
                self.ports["smtp"] = SAMPLE_SMTP_PORT  # the port the samples name
            self.ports |= {n: free_port() for n in names if n not in self.ports}
            self.home.mkdir(parents=True, exist_ok=True)
            ports_file.write_text(json.dumps(self.ports))
        self.operator_kubeconfig = self.home / "operator.kubeconfig"
        self.servers: list[Service] = [
            *self.cluster.services,
            redis_service(self.home, self.ports["redis"]),
            capture_service(self.home, self.ports["smtp"], self.maildir),
        ]
        self.operator = operator_service(
            self.home, self.operator_kubeconfig, self.ports["operator_health"],
            self.ports["operator_metrics"], self.env()["HERALD_REDIS_URL"])
        self.executor = executor_service(self.home / "executor", self.cluster.kubeconfig)
        self.services = [*self.servers, self.operator, self.executor]

    def up(self) -> None:
        if not build.is_built():
            print("building the control plane (the first time only; this takes a while)...",
                  flush=True)
            build.build()
        self.cluster.prepare()
        start_all(self.servers, attached=False, timeout=120)
        if not self.operator.healthy():
            self.cluster.install(*MANIFESTS)
            # The operator runs as its own ServiceAccount, so its RBAC is the real one.
            self.cluster.service_account_kubeconfig(
                OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, self.operator_kubeconfig)
        start_all([self.operator, self.executor], attached=False, timeout=60)

    def down(self) -> None:
        stop_all(self.services)

    def env(self) -> dict[str, str]:
        return {
            "HERALD_DEV_HOME": str(self.home),
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
