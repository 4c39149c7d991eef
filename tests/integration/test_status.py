"""Counts in the campaign's status, Completed, and reopening when the audience grows."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kubernetes import client

from herald_dev.services import Service
from tests.conftest import Mailbox, wait_for
from tests.integration.conftest import Delivery, csv_audience, per_recipient

pytestmark = pytest.mark.timeout(180)


def status_of(delivery: Delivery, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(delivery.api).get_namespaced_custom_object(
        "herald.dev", "v1alpha1", delivery.ns, "notificationcampaigns", name)
    return obj.get("status") or {}


def cronjobs_suspended(delivery: Delivery) -> list[bool]:
    return [cj.spec.suspend for cj in
            client.BatchV1Api(delivery.api).list_namespaced_cron_job(delivery.ns).items]


def test_a_completed_campaign_reopens_for_new_recipients_only(
    operator: Service, delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": "email,name\nuser2@example.com,Two\n"})
    delivery.campaign("notice", capture, audience={
        "inline": [{"email": "user1@example.com"}, {"email": "bad address"}],
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]})
    code, log = delivery.run("notice")
    assert code == 0, log
    status = wait_for(lambda: (s := status_of(delivery, "notice")).get("phase") == "Completed"
                      and s, timeout=30)
    assert (status["total"], status["sent"], status["failed"], status["pending"]) == (3, 2, 1, 0)
    assert status["lastRun"]["result"] == "Done"
    assert status["lastRun"]["sent"] == 2
    assert cronjobs_suspended(delivery) == [True]

    client.CoreV1Api(delivery.api).patch_namespaced_config_map("recipients", delivery.ns, {
        "data": {"recipients.csv": "email,name\nuser2@example.com,Two\nuser3@example.com,3\n"}})
    wait_for(lambda: status_of(delivery, "notice").get("phase") == "Scheduled", timeout=30)
    assert cronjobs_suspended(delivery) == [False]
    code, log = delivery.run("notice")
    assert code == 0, log
    wait_for(lambda: status_of(delivery, "notice").get("phase") == "Completed", timeout=30)
    assert per_recipient(capture) == {"user1@example.com": 1, "user2@example.com": 1,
                                      "user3@example.com": 1}
    assert status_of(delivery, "notice")["sent"] == 3


def test_counts_never_go_backwards_with_three_writers(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": csv_audience(2000)})
    delivery.campaign("crowd", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]},
        smtp={"host": "127.0.0.1", "port": capture.port, "security": "None",
              "timeoutSeconds": 2, "connections": 2},
        # About 10 s of sending, so the writers' 2-second status patches overlap many times.
        delivery={"leaseSeconds": 4, "backoffSeconds": 1, "ratePerSecond": 200})
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            s = status_of(delivery, "crowd")
            if "countsVersion" in s:
                seen.append((s["countsVersion"], s["sent"]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        workers = [delivery.start("crowd") for _ in range(3)]
        assert [w.wait(timeout=150) for w in workers] == [0, 0, 0]
    finally:
        done.set()
        watcher.join()
    assert seen == sorted(seen), "a count went backwards"
    progress = sorted({sent for _, sent in seen if sent < 2000})
    assert len(progress) >= 3, f"too few readings during the run to judge: {progress}"
    final = status_of(delivery, "crowd")
    assert (final["sent"], final["pending"], final["total"]) == (2000, 0, 2000)
    print(f"{len(seen)} readings, {len(set(seen))} distinct, sent during the run {progress}")


def test_a_message_edit_pauses_delivery_until_the_person_chooses_a_key(
    operator: Service, delivery: Delivery, capture: Mailbox
) -> None:
    audience = {"inline": [{"email": "user1@example.com"}, {"email": "user2@example.com"}]}
    delivery.campaign("edited", capture, audience=audience)
    assert delivery.run("edited")[0] == 0
    first_key = wait_for(lambda: status_of(delivery, "edited").get("dedupeKey"), timeout=30)
    edited = {"from": "Notices <no-reply@example.com>", "subject": "Notice (typo fixed)",
              "text": "Hello"}

    # A typo fix, then delete and re-apply: the status is gone, the ledger is not.
    delivery.campaign("edited", capture, audience=audience, message=edited)
    delivery.cp.kubectl("delete", "nc", "edited", "-n", delivery.ns)
    delivery.campaign("edited", capture, audience=audience, message=edited)
    code, log = delivery.run("edited")
    assert code == 0 and '"result": "ContentChanged"' in log, log
    changed = wait_for(lambda: next((c for c in status_of(delivery, "edited").get(
        "conditions", []) if c["type"] == "ContentChanged" and c["status"] == "True"), None),
        timeout=30)
    assert first_key in changed["message"]
    assert status_of(delivery, "edited")["phase"] == "Suspended"
    assert cronjobs_suspended(delivery) == [True]

    # Go on without resending: the old key.
    delivery.campaign("edited", capture, audience=audience, message=edited,
                      delivery={"dedupeKey": first_key, "leaseSeconds": 4, "backoffSeconds": 1})
    wait_for(lambda: status_of(delivery, "edited").get("phase") == "Scheduled", timeout=30)
    assert delivery.run("edited")[0] == 0
    assert per_recipient(capture) == {"user1@example.com": 1, "user2@example.com": 1}
    wait_for(lambda: status_of(delivery, "edited").get("phase") == "Completed", timeout=30)

    # A new round to everybody: a new key.
    delivery.campaign("edited", capture, audience=audience, message=edited,
                      delivery={"dedupeKey": "round-2", "leaseSeconds": 4, "backoffSeconds": 1})
    assert delivery.run("edited")[0] == 0
    assert per_recipient(capture) == {"user1@example.com": 2, "user2@example.com": 2}
