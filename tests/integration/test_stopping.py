"""A run stops when told, and hands nothing to SMTP after it was told.

Timing is asserted with loose bounds; the observed figure is printed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from kubernetes import client

from herald_api.models import CampaignSpec, content_key
from herald_dev.services import Service
from herald_jobs.keys import CampaignKeys
from tests.conftest import Mailbox, wait_for
from tests.integration.conftest import Delivery, csv_audience, per_recipient

pytestmark = pytest.mark.timeout(180)
AUDIENCE = 6000


def big_campaign(stack: Delivery, box: Mailbox, name: str, **spec: Any) -> CampaignSpec:
    stack.configmap(f"{name}-recipients", {"recipients.csv": csv_audience(AUDIENCE)})
    return stack.campaign(name, box, audience={
        "configMaps": [{"name": f"{name}-recipients", "key": "recipients.csv"}]}, **spec)


def start_and_wait_for_mail(delivery: Delivery, box: Mailbox, name: str,
                            env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    job = delivery.start(name, env=env)
    wait_for(lambda: len(box.journal()) >= 100, timeout=60, interval=0.05)
    return job


def stopped_within(box: Mailbox, job: subprocess.Popen[str], told: float, log: str) -> float:
    """Seconds from `told` to the last message the server received; checks the run ended."""
    assert job.wait(timeout=60) == 0, log
    last = max(e["time"] for e in box.journal())
    received = len(box.journal())
    assert received < AUDIENCE, "the run finished before it was told to stop"
    print(f"last handover {last - told:+.3f} s after the stop; {received} of {AUDIENCE} sent")
    return last - told


def patch_campaign(delivery: Delivery, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(delivery.api).patch_namespaced_custom_object(
        "herald.dev", "v1alpha1", delivery.ns, "notificationcampaigns", name, {"spec": spec})


@pytest.mark.parametrize("operator_state", ["none", "frozen"])
def test_suspend_stops_new_handovers_within_a_second(
    delivery: Delivery, capture: Mailbox, operator_state: str,
    start_operator: Callable[..., Service]
) -> None:
    if operator_state == "frozen":  # the pods watch the API themselves
        operator = start_operator()
        operator.stop_signal = signal.SIGKILL
        pid = operator.pid()
        assert pid
        os.kill(pid, signal.SIGSTOP)
    spec = big_campaign(delivery, capture, "paused")
    job = start_and_wait_for_mail(delivery, capture, "paused")
    told = time.time()
    patch_campaign(delivery, "paused", {"suspend": True})
    job.wait(timeout=60)
    log = delivery.logs[-1].read_text()
    assert stopped_within(capture, job, told, log) < 1.5
    assert '"result": "Suspended"' in log
    keys = CampaignKeys(delivery.ns, "paused", content_key(spec.message))
    r = redis.Redis.from_url(delivery.redis_url)
    assert r.get(keys.stop) == b"Suspended"  # every pod's mark now refuses
    assert r.zcard(keys.leases) == 0  # what it held, it gave back

    # Resuming sends only what was never sent.
    patch_campaign(delivery, "paused", {"suspend": False})
    code, log = delivery.run("paused")
    assert code == 0, log
    received = per_recipient(capture)
    assert len(received) == AUDIENCE
    assert set(received.values()) == {1}


def test_the_cluster_halt_stops_a_run(
    delivery: Delivery, capture: Mailbox, request: pytest.FixtureRequest
) -> None:
    big_campaign(delivery, capture, "halted")
    job = start_and_wait_for_mail(delivery, capture, "halted")
    halt = ["patch", "deliveryhalt", "cluster", "--type", "merge", "-p"]
    request.addfinalizer(lambda: delivery.cp.kubectl(*halt, '{"spec":{"halted":false}}'))
    told = time.time()
    delivery.cp.kubectl(*halt, '{"spec":{"halted":true,"reason":"test"}}')
    job.wait(timeout=60)
    log = delivery.logs[-1].read_text()
    assert stopped_within(capture, job, told, log) < 1.5
    assert '"result": "Halted"' in log
    # A run started during the halt sends nothing at all.
    before = len(capture.journal())
    code, log = delivery.run("halted")
    assert code == 0 and '"result": "Halted"' in log, log
    assert len(capture.journal()) == before


def test_nothing_is_handed_over_after_the_window_ends(
    delivery: Delivery, capture: Mailbox
) -> None:
    # A UTC window ending a minute or two from now; the run's clock is moved to 8 s
    # before that end.
    end = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)).replace(second=0, microsecond=0)
    start = end - dt.timedelta(hours=2)
    big_campaign(delivery, capture, "windowed", timeZone="UTC", windows=[{
        "days": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
        "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}])
    started = time.time()
    offset = (end - dt.datetime.now(dt.UTC)).total_seconds() - 8
    job = delivery.start("windowed", env={"HERALD_CLOCK_OFFSET_SECONDS": str(offset)})
    assert job.wait(timeout=60) == 0
    log = delivery.logs[-1].read_text()
    assert '"result": "WindowClosed"' in log, log
    journal = capture.journal()
    assert 0 < len(journal) < AUDIENCE
    # The window ended 8 s (on the run's clock) after the run started; a message in flight
    # at the end may finish.
    late = max(e["time"] for e in journal) - started
    print(f"last handover {late:.3f} s after the start; the window ended after 8 s")
    assert 0 < late < 8 + 1.5


def test_a_run_outside_its_window_sends_nothing(delivery: Delivery, capture: Mailbox) -> None:
    now = dt.datetime.now(dt.UTC)
    start = now + dt.timedelta(hours=2)
    end = now + dt.timedelta(hours=3)
    delivery.campaign("closed", capture, timeZone="UTC", windows=[{
        "days": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
        "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}])
    code, log = delivery.run("closed")
    assert code == 0, log
    assert '"result": "WindowClosed"' in log
    assert capture.journal() == []


def test_a_run_that_cannot_confirm_its_campaign_stops_sending(
    delivery: Delivery, capture: Mailbox
) -> None:
    # Capped so the run outlasts the seconds it takes to fail closed on any machine.
    big_campaign(delivery, capture, "deaf",
                 delivery={"leaseSeconds": 4, "backoffSeconds": 1, "ratePerSecond": 400})
    job = start_and_wait_for_mail(delivery, capture, "deaf")
    told = time.time()
    # Its ServiceAccount loses the right to read the campaign: it can no longer tell
    # whether it was suspended.
    client.RbacAuthorizationV1Api(delivery.api).delete_namespaced_role_binding(
        "herald-job-deaf", delivery.ns)
    job.wait(timeout=60)
    log = delivery.logs[-1].read_text()
    took = stopped_within(capture, job, told, log)
    assert '"result": "Unconfirmed"' in log
    assert took < 5 + 5  # a few seconds without confirmation, plus the watch period


def test_sigterm_finishes_in_flight_work_and_gives_the_rest_back(
    delivery: Delivery, capture: Mailbox
) -> None:
    spec = big_campaign(delivery, capture, "terminated")
    job = start_and_wait_for_mail(delivery, capture, "terminated")
    told = time.time()
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=60)
    log = delivery.logs[-1].read_text()
    assert stopped_within(capture, job, told, log) < 1.5
    assert '"result": "Terminated"' in log
    keys = CampaignKeys(delivery.ns, "terminated", content_key(spec.message))
    assert redis.Redis.from_url(delivery.redis_url).zcard(keys.leases) == 0
    counts = json.loads(log.strip().splitlines()[-1])["counts"]
    assert counts["pending"] > 0 and counts.get("unknown", 0) == 0
