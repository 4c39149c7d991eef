"""`herald demo` end to end on its own local stack: CronJob → Job → Pod on the local
executor, checked from the captured .eml files and the campaign's status."""

from __future__ import annotations

import collections
import email
import email.policy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from herald_dev import samples
from herald_dev.stack import DevStack

pytestmark = pytest.mark.timeout(600)
RECIPIENTS = 500


@pytest.fixture
def dev_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "dev"
    yield home
    DevStack(home).down()


def herald(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "herald_dev.cli", *args],
                          env={**os.environ, "HERALD_DEV_HOME": str(home)},
                          capture_output=True, text=True, timeout=500)


def test_the_demo_delivers_each_valid_recipient_exactly_once(dev_home: Path) -> None:
    done = herald(dev_home, "demo", "--recipients", str(RECIPIENTS))
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout

    stack = DevStack(dev_home)
    received: collections.Counter[str] = collections.Counter()
    for path in stack.maildir.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["X-Campaign"] == "usage-notice-2026":
            received[message["To"].addresses[0].addr_spec.casefold()] += 1
    rows = samples.recipients(RECIPIENTS)
    invalid = {a.casefold() for a in samples.INVALID}
    spelled = {r["email"].strip().casefold() for r in rows}  # repeats differ in case, spaces
    valid = {a.replace("예시.kr", "xn--vv4b11d.kr") for a in spelled - invalid}
    assert set(received) == valid
    assert set(received.values()) == {1}

    campaign = json.loads(stack.cluster.kubectl(
        "get", "nc", "usage-notice-2026", "-n", "herald-demo", "-o", "json"))["status"]
    assert (campaign["sent"], campaign["failed"], campaign["pending"],
            campaign["unknown"]) == (len(valid), len(invalid), 0, 0)
    assert campaign["duplicatesInAudience"] == RECIPIENTS - len(valid) - len(invalid)
    assert campaign["phase"] == "Completed"

    # The runs went the real way: Jobs from the CronJob, pods bound to the executor's node.
    pods = json.loads(stack.cluster.kubectl("get", "pods", "-n", "herald-demo", "-o", "json"))
    nodes = {p["spec"].get("nodeName") for p in pods["items"]}
    assert nodes == {"herald-local"}
    owners = {p["metadata"]["ownerReferences"][0]["kind"] for p in pods["items"]}
    assert owners == {"Job"}
    assert {p["status"]["phase"] for p in pods["items"]} == {"Succeeded"}
