"""Ledger loss is an incident, not a resend: a ledger that is gone, another one or an older
one halts the campaign (LedgerLost) until a person acknowledges it."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import redis
from kubernetes import client

from herald_api.names import LEDGER_LOSS_ACK
from herald_dev.services import Service
from herald_jobs.keys import CampaignKeys
from tests.conftest import Mailbox, wait_for
from tests.integration.conftest import Delivery, csv_audience, per_recipient
from tests.integration.test_status import cronjobs_suspended, status_of

pytestmark = pytest.mark.timeout(180)
FIVE = [{"email": f"user{i}@example.com"} for i in range(5)]


def halted_condition(delivery: Delivery, name: str) -> dict[str, Any]:
    conditions = status_of(delivery, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Halted"), {})


def events(delivery: Delivery, reason: str) -> list[str]:
    return [e.message for e in client.CoreV1Api(delivery.api).list_namespaced_event(
        delivery.ns).items if e.reason == reason]


def test_a_flushed_ledger_halts_the_campaign_and_nothing_is_resent(
    operator: Service, delivery: Delivery, capture: Mailbox, request: pytest.FixtureRequest
) -> None:
    delivery.campaign("notice", capture, audience={"inline": FIVE})
    assert delivery.run("notice")[0] == 0
    recorded = wait_for(lambda: status_of(delivery, "notice").get("ledger"), timeout=10)
    assert recorded["handovers"] == 5
    assert len(capture.journal()) == 5

    redis.Redis.from_url(delivery.redis_url).flushall()  # Redis lost everything
    code, log = delivery.run("notice")
    assert code == 0 and '"result": "LedgerLost"' in log, log
    assert len(capture.journal()) == 5, "a lost ledger turned into a resend"
    loss = status_of(delivery, "notice")["ledgerLoss"]
    assert loss["expected"] == recorded and "found" not in loss
    assert "the ledger is gone" in loss["reason"]
    wait_for(lambda: status_of(delivery, "notice").get("phase") == "Halted", timeout=20)
    halted = halted_condition(delivery, "notice")
    assert (halted["status"], halted["reason"]) == ("True", "LedgerLost")
    command = f"--overwrite {LEDGER_LOSS_ACK}={loss['id']}"
    assert command in halted["message"]
    assert cronjobs_suspended(delivery) == [True]
    [lost_event] = events(delivery, "LedgerLost")
    assert command in lost_event

    # Undoing a cluster halt never clears a LedgerLost halt.
    halt = ["patch", "deliveryhalt", "cluster", "--type", "merge", "-p"]
    request.addfinalizer(lambda: delivery.cp.kubectl(*halt, '{"spec":{"halted":false}}'))
    delivery.cp.kubectl(*halt, '{"spec":{"halted":true,"reason":"test"}}')
    delivery.cp.kubectl(*halt, '{"spec":{"halted":false}}')
    time.sleep(4)  # a few of the operator's resyncs
    assert halted_condition(delivery, "notice")["reason"] == "LedgerLost"
    assert delivery.run("notice")[0] == 0
    assert len(capture.journal()) == 5
    assert status_of(delivery, "notice")["ledgerLoss"]["id"] == loss["id"]  # the same loss

    # A person acknowledges, the documented way: delivery goes on with the ledger found.
    delivery.cp.kubectl("annotate", "nc", "notice", "-n", delivery.ns,
                        *command.split(" "))
    wait_for(lambda: halted_condition(delivery, "notice")["status"] == "False", timeout=20)
    # Everybody had been sent before the loss: the campaign is Completed, not resumed.
    assert status_of(delivery, "notice")["phase"] == "Completed"
    assert cronjobs_suspended(delivery) == [True]
    code, log = delivery.run("notice")  # a run by hand, as a person may start one
    assert code == 0 and '"result": "Done"' in log, log
    status = status_of(delivery, "notice")
    assert "ledgerLoss" not in status
    assert status["ledger"]["id"] != recorded["id"] and status["ledger"]["handovers"] == 5
    assert (status["sent"], status["total"]) == (5, 5)
    assert events(delivery, "LedgerLossAcknowledged")
    # The ledger the person accepted knew nobody: that is the resend they accepted.
    assert set(per_recipient(capture).values()) == {2}

    # The old acknowledgement does not cover a new loss.
    redis.Redis.from_url(delivery.redis_url).flushall()
    code, log = delivery.run("notice")
    assert code == 0 and '"result": "LedgerLost"' in log, log
    assert len(capture.journal()) == 10
    wait_for(lambda: status_of(delivery, "notice").get("phase") == "Halted", timeout=20)


def test_pods_that_find_one_loss_together_name_one_id_to_acknowledge(
    operator: Service, delivery: Delivery, capture: Mailbox
) -> None:
    delivery.campaign("notice", capture, audience={"inline": FIVE})
    assert delivery.run("notice")[0] == 0
    wait_for(lambda: status_of(delivery, "notice").get("ledger"), timeout=10)
    redis.Redis.from_url(delivery.redis_url).flushall()
    workers = [delivery.start("notice") for _ in range(4)]  # the pods of one run
    assert [w.wait(timeout=60) for w in workers] == [0, 0, 0, 0]
    loss_id = status_of(delivery, "notice")["ledgerLoss"]["id"]
    lost = events(delivery, "LedgerLost")
    assert lost and all(f"={loss_id}" in message for message in lost), (loss_id, lost)
    wait_for(lambda: halted_condition(delivery, "notice").get("reason") == "LedgerLost", 20)
    assert f"={loss_id}" in halted_condition(delivery, "notice")["message"]
    assert len(capture.journal()) == 5


@pytest.mark.parametrize("change, reason", [
    ({"id": "0123456789abcdef"}, "another ledger"),
    ({"handovers": 2}, "an older ledger"),
])
def test_another_or_an_older_ledger_is_a_loss(
    delivery: Delivery, capture: Mailbox, change: dict[str, Any], reason: str
) -> None:
    delivery.campaign("notice", capture, audience={"inline": FIVE})
    assert delivery.run("notice")[0] == 0
    recorded = status_of(delivery, "notice")["ledger"]
    # A new Redis, or a snapshot restored from before the last sends.
    redis.Redis.from_url(delivery.redis_url).hset(
        CampaignKeys(delivery.ns, "notice", "").identity, mapping=change)
    delivery.configmap("more", {"more.csv": csv_audience(20)})
    delivery.campaign("notice", capture, audience={
        "inline": FIVE, "configMaps": [{"name": "more", "key": "more.csv"}]})
    code, log = delivery.run("notice")
    assert code == 0 and '"result": "LedgerLost"' in log, log
    assert len(capture.journal()) == 5
    loss = status_of(delivery, "notice")["ledgerLoss"]
    assert loss["reason"].startswith(reason)
    assert loss["expected"] == recorded
    assert loss["found"] == {**recorded, **change}


def test_a_ledger_lost_during_a_run_stops_it(delivery: Delivery, capture: Mailbox) -> None:
    delivery.configmap("recipients", {"recipients.csv": csv_audience(2000)})
    delivery.campaign("notice", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]},
        delivery={"leaseSeconds": 4, "backoffSeconds": 1, "ratePerSecond": 200})
    job = delivery.start("notice")
    wait_for(lambda: len(capture.journal()) >= 50, timeout=60, interval=0.05)
    lost_at = time.time()
    redis.Redis.from_url(delivery.redis_url).flushall()
    assert job.wait(timeout=60) == 0
    log = delivery.logs[-1].read_text()
    assert '"result": "LedgerLost"' in log, log
    after = [e for e in capture.journal() if e["time"] > lost_at]
    print(f"{len(after)} handed over after the loss (in flight then)")
    assert len(after) <= 2  # the messages in flight on the campaign's two connections
    assert "the ledger is gone" in status_of(delivery, "notice")["ledgerLoss"]["reason"]


def snapshot(delivery: Delivery, name: str) -> dict[bytes, bytes]:
    """A backup of one campaign's keys (what a restored Redis snapshot would hold)."""
    r = redis.Redis.from_url(delivery.redis_url)
    return {k: r.dump(k) for k in r.scan_iter(match=f"herald:{{{delivery.ns}/{name}}}*")}


def restore(delivery: Delivery, name: str, keys: dict[bytes, bytes]) -> None:
    r = redis.Redis.from_url(delivery.redis_url)
    for key in r.scan_iter(match=f"herald:{{{delivery.ns}/{name}}}*"):
        r.delete(key)
    for key, value in keys.items():
        r.restore(key, 0, value, replace=True)


def test_an_older_copy_restored_during_a_run_stops_it(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": csv_audience(600)})
    delivery.campaign("notice", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]},
        delivery={"leaseSeconds": 4, "backoffSeconds": 1, "ratePerSecond": 50})
    job = delivery.start("notice")
    wait_for(lambda: len(capture.journal()) >= 30, timeout=60, interval=0.05)
    backup = snapshot(delivery, "notice")
    wait_for(lambda: len(capture.journal()) >= 90, timeout=60, interval=0.05)
    restored_at = time.time()
    restore(delivery, "notice", backup)  # e.g. a failover to a replica that lagged behind
    assert job.wait(timeout=60) == 0
    log = delivery.logs[-1].read_text()
    assert '"result": "LedgerLost"' in log, log
    after = [e for e in capture.journal() if e["time"] > restored_at]
    print(f"{len(after)} handed over after the restore (in flight then)")
    assert len(after) <= 2
    assert max(per_recipient(capture).values()) == 1
    assert delivery.run("notice")[1].count('"result": "LedgerLost"') == 1  # and stays halted
    assert max(per_recipient(capture).values()) == 1


def acknowledge(delivery: Delivery, name: str) -> str:
    loss_id = str(status_of(delivery, name)["ledgerLoss"]["id"])
    delivery.cp.kubectl("annotate", "nc", name, "-n", delivery.ns, "--overwrite",
                        f"{LEDGER_LOSS_ACK}={loss_id}")
    return loss_id


def test_an_acknowledgement_covers_only_what_the_person_was_shown(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": csv_audience(10)})
    delivery.campaign("notice", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]})
    assert delivery.run("notice")[0] == 0
    ten = snapshot(delivery, "notice")
    client.CoreV1Api(delivery.api).patch_namespaced_config_map("recipients", delivery.ns, {
        "data": {"recipients.csv": csv_audience(20)}})
    assert delivery.run("notice")[0] == 0
    twenty = snapshot(delivery, "notice")
    restore(delivery, "notice", ten)  # an older copy: ten people at risk
    assert '"result": "LedgerLost"' in delivery.run("notice")[1]
    shown = acknowledge(delivery, "notice")
    restore(delivery, "notice", {})  # lost again before the next run: all twenty at risk
    assert '"result": "LedgerLost"' in delivery.run("notice")[1]
    assert status_of(delivery, "notice")["ledgerLoss"]["id"] != shown
    assert len(capture.journal()) == 20, "the acknowledgement covered a loss nobody saw"

    # The real ledger restored: still a loss until acknowledged, then adopted as it is.
    restore(delivery, "notice", twenty)
    assert '"result": "LedgerLost"' in delivery.run("notice")[1]
    acknowledge(delivery, "notice")
    assert '"result": "Done"' in delivery.run("notice")[1]
    assert "ledgerLoss" not in status_of(delivery, "notice")
    assert len(capture.journal()) == 20


def test_an_older_copy_restored_under_three_pods_resends_nothing(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": csv_audience(300)})
    delivery.campaign("notice", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]},
        delivery={"leaseSeconds": 4, "backoffSeconds": 1, "ratePerSecond": 30})
    workers = [delivery.start("notice") for _ in range(3)]
    wait_for(lambda: len(capture.journal()) >= 20, timeout=60, interval=0.05)
    os.kill(workers[0].pid, signal.SIGSTOP)  # a pod that has not marked for a while
    try:
        wait_for(lambda: len(capture.journal()) >= 50, timeout=60, interval=0.05)
        backup = snapshot(delivery, "notice")
        wait_for(lambda: len(capture.journal()) >= 75, timeout=60, interval=0.05)
        restore(delivery, "notice", backup)  # the other pods push the counter back up
    finally:
        os.kill(workers[0].pid, signal.SIGCONT)
    assert [w.wait(timeout=60) for w in workers] == [0, 0, 0]
    received = per_recipient(capture)
    print(f"{len(capture.journal())} handed over; most to one person: {max(received.values())}")
    assert max(received.values()) == 1
    assert '"result": "LedgerLost"' in delivery.run("notice")[1]  # and it stays halted
    assert max(per_recipient(capture).values()) == 1


def test_a_rewind_seen_by_one_pod_halts_the_campaign_even_after_the_counter_grew_back(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": csv_audience(400)})
    delivery.campaign("notice", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]},
        smtp={"host": "127.0.0.1", "port": capture.port, "security": "None",
              "timeoutSeconds": 2, "connections": 1},
        delivery={"leaseSeconds": 30, "backoffSeconds": 1, "ratePerSecond": 20})
    first = delivery.start("notice")
    wait_for(lambda: len(capture.journal()) >= 20, timeout=60, interval=0.05)
    backup = snapshot(delivery, "notice")
    wait_for(lambda: len(capture.journal()) >= 40, timeout=60, interval=0.05)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        restore(delivery, "notice", backup)
        second = delivery.start("notice")  # knows nothing of what was lost
        wait_for(lambda: len(capture.journal()) >= 80, timeout=60, interval=0.05)
    finally:
        os.kill(first.pid, signal.SIGCONT)  # its own marks are gone: it says so
    assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
    twice = sum(n > 1 for n in per_recipient(capture).values())
    print(f"{twice} sent twice by the pod that could not know, before the other woke")
    assert '"result": "LedgerLost"' in delivery.logs[0].read_text()
    assert '"result": "LedgerLost"' in delivery.logs[1].read_text()  # stopped by the first
    assert status_of(delivery, "notice")["ledgerLoss"]["id"]
    before = len(capture.journal())
    assert '"result": "LedgerLost"' in delivery.run("notice")[1]  # it stays halted
    assert len(capture.journal()) == before
