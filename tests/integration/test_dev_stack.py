"""`herald dev up|status|env|down`, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from herald_dev.services import pid_alive
from herald_dev.stack import DevStack

HERALD = [sys.executable, "-m", "herald_dev.cli", "dev"]


def herald(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HERALD_DEV_HOME": str(home)}
    return subprocess.run([*HERALD, *args], env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "dev"
    # Whatever the test did, leave no server running.
    herald(tmp_path / "dev", "down")


@pytest.mark.timeout(300)
def test_up_is_idempotent_env_reaches_it_and_down_stops_everything(home: Path) -> None:
    first = herald(home, "up")
    assert first.returncode == 0, first.stderr
    stack = DevStack(home)
    pids = {s.name: s.pid() for s in stack.services}
    assert all(pids.values())

    second = herald(home, "up")
    assert second.returncode == 0, second.stderr
    assert {s.name: s.pid() for s in stack.services} == pids, "a second up restarted something"

    status = herald(home, "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == len(stack.services)
    assert str(stack.cluster.kubeconfig) in status.stdout

    # eval "$(herald dev env)" makes kubectl and Redis reach the stack.
    script = herald(home, "env").stdout
    shell = subprocess.run(
        ["bash", "-c", f'{script}\nkubectl version -o json >/dev/null && kubectl get ns default '
                       '-o name && echo "$HERALD_REDIS_URL $HERALD_SMTP_PORT $HERALD_CAPTURE_DIR"'],
        capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    lines = shell.stdout.split("\n")
    assert lines[0] == "namespace/default"
    redis_url, smtp_port, capture_dir = lines[1].split()
    assert redis.Redis.from_url(redis_url).ping()
    assert smtp_port == str(stack.ports["smtp"])
    assert Path(capture_dir) == stack.maildir
    assert f"export HERALD_DEV_HOME={home}" in script

    down = herald(home, "down")
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(pid) for pid in pids.values() if pid)
    assert herald(home, "status").returncode == 1
