"""Fixtures on real servers: one control plane per test session and a namespace per test,
one redis-server flushed per test, SMTP capture and fault servers per test, smtp-sink.

Every server is started attached, so it dies with the test run however the run ends. When
a test fails, the tails of the logs of the servers it used are added to its report.
"""

from __future__ import annotations

import email
import email.policy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from kubernetes import client, config

from herald_dev import build
from herald_dev.controlplane import ControlPlane, loopback_certificate
from herald_dev.servers import capture_service, redis_service, smtp_sink_service
from herald_dev.services import Service, free_port, start_all, stop_all
from herald_dev.stack import (
    MANIFESTS,
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    executor_service,
    operator_service,
)

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.5) -> T:
    """Poll until predicate() is truthy; return its value, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            break
        time.sleep(interval)
    if not value:
        pytest.fail(f"condition not met within {timeout:.0f} s")
    return value


# fixture name → the services it runs / other log files, for log tails on failure
_SERVICES_BY_FIXTURE: dict[str, list[Service]] = {}
LOGS_BY_FIXTURE: dict[str, list[Path]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    if report.failed:
        for name in getattr(item, "fixturenames", ()):
            for service in _SERVICES_BY_FIXTURE.get(name, ()):
                report.sections.append((f"log of {service.name}", service.log_tail(40)))
            for path in LOGS_BY_FIXTURE.get(name, ()):
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-40:])
                report.sections.append((f"log {path.name}", tail))
    return report


def _run(fixture: str, services: list[Service], timeout: float = 60) -> None:
    _SERVICES_BY_FIXTURE[fixture] = services
    try:
        start_all(services, attached=True, timeout=timeout)
    except BaseException:
        stop_all(services)
        raise


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if not build.is_built():
        pytest.fail("the control plane is not built: run `make controlplane` (make test does)")
    cp = ControlPlane(tmp_path_factory.mktemp("cluster"))
    cp.prepare()
    _run("control_plane", cp.services, timeout=120)
    yield cp
    stop_all(cp.services)


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted after it."""
    slug = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server configured as a ledger, for the whole session; yields its URL."""
    port = free_port()
    service = redis_service(tmp_path_factory.mktemp("redis"), port)
    _run("redis_server", [service])
    yield f"redis://127.0.0.1:{port}/0"
    stop_all([service])


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The URL of the session's ledger Redis, emptied for this test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@dataclass
class Mailbox:
    """An SMTP server of the tests, and what it received."""

    port: int
    dir: Path
    service: Service
    ca: Path | None = None  # the CA to trust, when the server speaks TLS

    def journal(self) -> list[dict]:
        path = self.dir / "journal.jsonl"
        if not path.exists():
            return []
        # The server may be writing a line right now: only complete lines count.
        text = path.read_text()
        return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted(self.dir.glob("*.eml"))
        ]


def _mailbox(tmp_path: Path, fixture: str, *, faults: bool, extra: tuple[str, ...] = (),
             ca: Path | None = None) -> Mailbox:
    port = free_port()
    maildir = tmp_path / "mail"
    service = capture_service(tmp_path / "smtp", port, maildir, faults=faults, extra=extra)
    _run(fixture, [service])
    return Mailbox(port, maildir, service, ca)


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[Mailbox]:
    """The capture server: every accepted message as an .eml file."""
    box = _mailbox(tmp_path, "capture", faults=False)
    yield box
    box.service.stop()


SMTP_USER, SMTP_PASSWORD = "herald", "s3cret-pa55"


@pytest.fixture
def tls_capture(tmp_path: Path) -> Iterator[Mailbox]:
    """The capture server requiring STARTTLS and AUTH (SMTP_USER, SMTP_PASSWORD)."""
    ca, cert, key = loopback_certificate(tmp_path / "tls", "smtp")
    box = _mailbox(tmp_path, "tls_capture", faults=False, ca=ca, extra=(
        "--tls-cert", str(cert), "--tls-key", str(key), "--auth", f"{SMTP_USER}:{SMTP_PASSWORD}"))
    yield box
    box.service.stop()


@pytest.fixture
def fault_smtp(tmp_path: Path) -> Iterator[Mailbox]:
    """The capture server with faults aimed by recipient (see herald_dev.smtpserver)."""
    box = _mailbox(tmp_path, "fault_smtp", faults=True)
    yield box
    box.service.stop()


@pytest.fixture(scope="session")
def smtp_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Postfix's smtp-sink on a free port; yields the port."""
    port = free_port()
    service = smtp_sink_service(tmp_path_factory.mktemp("smtp-sink"), port)
    _run("smtp_sink", [service])
    yield port
    stop_all([service])


@pytest.fixture(scope="session")
def herald_installed(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
                     ) -> Path:
    """Herald's CRDs and RBAC on the session's cluster; yields the operator's kubeconfig."""
    control_plane.install(*MANIFESTS)
    path = tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    return control_plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, path)


@pytest.fixture
def start_operator(herald_installed: Path, tmp_path: Path, request: pytest.FixtureRequest
                   ) -> Iterator[Callable[..., Service]]:
    """Start `herald operator` processes (as its ServiceAccount); all stop after the test."""
    started: list[Service] = []
    peering = f"herald-{uuid.uuid4().hex[:8]}"  # no stale peers from earlier tests

    def start(*extra: str) -> Service:
        health = free_port()
        service = operator_service(tmp_path / f"operator-{len(started)}", herald_installed,
                                   health, free_port(), "redis://127.0.0.1:1/0")
        service.name = f"herald-operator-{len(started)}"
        service.argv = [*service.argv, "--peering", peering, "--resync-seconds", "3", *extra]
        started.append(service)
        _SERVICES_BY_FIXTURE["start_operator"] = started
        service.start(attached=True)
        service.wait_ready(60)
        return service

    yield start
    stop_all(started)


@pytest.fixture
def operator(start_operator: Callable[..., Service]) -> Service:
    return start_operator()


@pytest.fixture
def executor(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Path]:
    """The local executor as the cluster's node; yields its folder (pods/<ns>/<pod>/)."""
    service = executor_service(tmp_path / "executor", control_plane.kubeconfig)
    _run("executor", [service])
    yield service.workdir
    service.stop()
