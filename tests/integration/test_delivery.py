"""`herald job` against the real API server, Redis and SMTP servers: outcomes, ledger,
concurrency, takeover.

Each test applies a campaign, gives its pods' ServiceAccount the access the operator would
(the same builders), and runs `herald job` as that ServiceAccount, as a separate process.
"""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest
from kubernetes import client

from herald_dev.servers import redis_service
from herald_dev.services import Service, free_port, start_all, stop_all
from tests.conftest import SMTP_PASSWORD, SMTP_USER, Mailbox, wait_for
from tests.integration.conftest import Delivery, csv_audience, per_recipient

pytestmark = pytest.mark.timeout(180)


def test_a_stall_after_the_data_is_unknown_and_never_resent(
    delivery: Delivery, fault_smtp: Mailbox
) -> None:
    stall = "stall-after-data-1@example.com"
    spec = delivery.campaign("incident", fault_smtp, audience={"inline": [
        {"email": stall}, {"email": "user1@example.com"}, {"email": "user2@example.com"}]})
    code, log = delivery.run("incident")
    assert code == 0, log
    assert per_recipient(fault_smtp, "stalled") == {stall: 1}
    assert per_recipient(fault_smtp) == {"user1@example.com": 1, "user2@example.com": 1}
    entry = delivery.ledger("incident", spec)[stall]
    assert entry["s"] == "unknown"
    assert "after data" in entry["r"]
    assert delivery.counts("incident", spec)["unknown"] == 1
    events = client.CoreV1Api(delivery.api).list_namespaced_event(delivery.ns).items
    by_reason = {e.reason: e.message for e in events}
    assert by_reason["RunStarted"].endswith("3 pending")
    assert by_reason["RunFinished"].startswith("Done: sent 2 in this run")
    assert "unknown" in by_reason["AmbiguousDelivery"]
    assert not any("@" in e.message for e in events)  # addresses never appear in Events
    # Later runs, as the CronJob would start them, never offer it again.
    for _ in range(2):
        assert delivery.run("incident")[0] == 0
    assert per_recipient(fault_smtp, "stalled") == {stall: 1}
    assert len(fault_smtp.journal()) == 3


def test_a_disconnect_after_the_data_is_unknown_and_never_resent(
    delivery: Delivery, fault_smtp: Mailbox
) -> None:
    drop = "drop-after-data-1@example.com"
    spec = delivery.campaign("dropped", fault_smtp, audience={"inline": [
        {"email": drop}, {"email": "user1@example.com"}]})
    assert delivery.run("dropped")[0] == 0
    assert delivery.run("dropped")[0] == 0
    assert per_recipient(fault_smtp, "dropped") == {drop: 1}
    assert per_recipient(fault_smtp) == {"user1@example.com": 1}
    assert delivery.ledger("dropped", spec)[drop]["s"] == "unknown"


def test_a_temporary_refusal_then_success_delivers_once(
    delivery: Delivery, fault_smtp: Mailbox
) -> None:
    flaky = "rcpt-451-once-1@example.com"
    spec = delivery.campaign("flaky", fault_smtp, audience={"inline": [{"email": flaky}]})
    code, log = delivery.run("flaky")
    assert code == 0, log
    assert per_recipient(fault_smtp) == {flaky: 1}
    entry = delivery.ledger("flaky", spec)[flaky]
    assert (entry["s"], entry["a"]) == ("sent", 2)


def test_a_permanent_refusal_fails_the_recipient(
    delivery: Delivery, fault_smtp: Mailbox
) -> None:
    refused = "rcpt-550-1@example.com"
    spec = delivery.campaign("refused", fault_smtp, audience={"inline": [
        {"email": refused}, {"email": "user1@example.com"}]})
    assert delivery.run("refused")[0] == 0
    entry = delivery.ledger("refused", spec)[refused]
    assert entry["s"] == "failed"
    assert entry["r"].startswith("550")
    assert per_recipient(fault_smtp) == {"user1@example.com": 1}
    counts = delivery.counts("refused", spec)
    assert (counts["failed"], counts["sent"], counts["pending"]) == (1, 1, 0)


def test_three_workers_deliver_each_of_2000_recipients_exactly_once(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": csv_audience(2000)})
    spec = delivery.campaign("crowd", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]},
        smtp={"host": "127.0.0.1", "port": capture.port, "security": "None", "connections": 4,
              "timeoutSeconds": 2})
    workers = [delivery.start("crowd") for _ in range(3)]
    assert [w.wait(timeout=150) for w in workers] == [0, 0, 0]
    received = per_recipient(capture)
    assert len(received) == 2000
    assert set(received.values()) == {1}
    counts = delivery.counts("crowd", spec)
    assert (counts["total"], counts["sent"], counts["pending"]) == (2000, 2000, 0)
    # Every worker seeded or waited; the audience was seeded once.
    seeded = [log.read_text().count('"audience seeded"') for log in delivery.logs]
    assert sum(seeded) == 1


@pytest.mark.parametrize("interruption", ["killed", "frozen"])
def test_a_worker_killed_or_frozen_past_its_lease_sends_nothing_twice(
    delivery: Delivery, capture: Mailbox, interruption: str
) -> None:
    """SIGKILL: a crash costs at most the messages in flight (unknown), none is lost.
    SIGSTOP past the lease while another run takes over, then SIGCONT: nothing twice."""
    delivery.configmap("recipients", {"recipients.csv": csv_audience(1500)})
    spec = delivery.campaign("cut", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]})
    first = delivery.start("cut")
    wait_for(lambda: len(capture.journal()) >= 100, timeout=60, interval=0.05)
    first.send_signal(signal.SIGKILL if interruption == "killed" else signal.SIGSTOP)
    try:
        assert len(capture.journal()) < 1500, "the first worker finished before the cut"
        code, log = delivery.run("cut")  # takes over once the first worker's leases expire
        assert code == 0, log
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=60) == (-signal.SIGKILL if interruption == "killed" else 0)

    received = per_recipient(capture)
    assert max(received.values()) == 1, [r for r, n in received.items() if n > 1]
    ledger = delivery.ledger("cut", spec)
    states = collections.Counter(e["s"] for e in ledger.values())
    assert set(states) <= {"sent", "unknown"}, states
    assert sum(states.values()) == 1500
    assert all(received[identity] == 1 for identity, e in ledger.items() if e["s"] == "sent")
    print(f"after the takeover: {dict(states)}")


@pytest.mark.parametrize(("setting", "value", "named"), [
    ("appendfsync", "everysec", "appendfsync"),
    ("appendonly", "no", "appendonly"),
    ("maxmemory-policy", "allkeys-lru", "maxmemory-policy"),
])
def test_a_redis_that_could_lose_writes_is_refused(
    delivery: Delivery, capture: Mailbox, tmp_path: Path, setting: str, value: str, named: str
) -> None:
    port = free_port()
    loose = redis_service(tmp_path / "loose-redis", port, {setting: value})
    start_all([loose], attached=True)
    try:
        delivery.campaign("careful", capture)
        code, log = delivery.run("careful", f"redis://127.0.0.1:{port}/0")
    finally:
        stop_all([loose])
    assert code == 3
    assert f"Redis setting {named} is '{value}'" in log
    assert capture.journal() == []


def test_line_breaks_in_a_variable_never_add_a_header_or_a_recipient(
    delivery: Delivery, capture: Mailbox
) -> None:
    evil = "Eve\r\nBcc: victim@example.com\r\nX-Injected: yes"
    delivery.campaign("inject", capture,
                      audience={"inline": [{"email": "user1@example.com",
                                            "vars": {"name": evil}}]},
                      message={"from": "no-reply@example.com", "subject": "Hi {{ name }}",
                               "text": "Dear {{ name }}"})
    assert delivery.run("inject")[0] == 0
    [entry] = capture.journal()
    assert entry["rcpt_tos"] == ["user1@example.com"]
    [msg] = capture.messages()
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert "victim@example.com" in msg["Subject"]  # kept as text, on one line
    assert "\n" not in msg["Subject"]


def test_an_undefined_variable_fails_that_recipient_and_the_rest_go_on(
    delivery: Delivery, capture: Mailbox
) -> None:
    spec = delivery.campaign(
        "undefined", capture,
        audience={"inline": [{"email": "user1@example.com", "vars": {"code": "A1"}},
                             {"email": "user2@example.com"}]},
        message={"from": "no-reply@example.com", "subject": "Code", "text": "{{ code }}"})
    assert delivery.run("undefined")[0] == 0
    assert per_recipient(capture) == {"user1@example.com": 1}
    entry = delivery.ledger("undefined", spec)["user2@example.com"]
    assert entry["s"] == "failed"
    assert "'code' is undefined" in entry["r"]


def test_one_address_in_two_spellings_and_two_sources_is_sent_once(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": "email\n user1@EXAMPLE.com \n"})
    spec = delivery.campaign("spellings", capture, audience={
        "inline": [{"email": "User1@Example.com"}],
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]})
    assert delivery.run("spellings")[0] == 0
    [entry] = capture.journal()
    assert entry["rcpt_tos"] == ["User1@example.com"]  # the first spelling, domain folded
    counts = delivery.counts("spellings", spec)
    assert (counts["total"], counts["sent"], counts["duplicatesInAudience"]) == (1, 1, 1)


def test_a_deleted_and_reapplied_campaign_resends_nothing(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.campaign("again", capture)
    assert delivery.run("again")[0] == 0
    delivery.cp.kubectl("delete", "nc", "again", "-n", delivery.ns)
    delivery.campaign("again", capture)
    assert delivery.run("again")[0] == 0
    assert per_recipient(capture) == {"user1@example.com": 1}


@pytest.mark.parametrize(("password", "delivered"), [(SMTP_PASSWORD, True), ("wrong", False)])
def test_starttls_and_auth_with_credentials_from_the_secret(
    delivery: Delivery, tls_capture: Mailbox, password: str, delivered: bool
) -> None:
    delivery.secret("smtp-credentials", {"username": SMTP_USER, "password": password})
    spec = delivery.campaign("secure", tls_capture, smtp={
        "host": "127.0.0.1", "port": tls_capture.port, "security": "STARTTLS",
        "timeoutSeconds": 2, "connections": 1,
        "credentialsSecretRef": {"name": "smtp-credentials"}})
    code, log = delivery.run("secure", env={"SSL_CERT_FILE": str(tls_capture.ca)})
    assert code == 0, log
    assert password not in log  # credentials never reach the logs
    entry = delivery.ledger("secure", spec)["user1@example.com"]
    if delivered:
        assert per_recipient(tls_capture) == {"user1@example.com": 1}
        assert entry["s"] == "sent"
    else:
        # A relay that refuses us is an outage, not the recipient's fault: still pending,
        # no attempt used, for the next run.
        assert tls_capture.journal() == []
        assert (entry["s"], entry["a"]) == ("pending", 0)
        assert "relay unavailable" in log


def test_ambiguous_outcomes_in_a_row_stop_the_run_and_leave_the_rest_pending(
    operator: Service, delivery: Delivery, fault_smtp: Mailbox
) -> None:
    stalls = [f"stall-after-data-{i}@example.com" for i in range(3)]
    spec = delivery.campaign("unhealthy", fault_smtp, audience={"inline": [
        *({"email": s} for s in stalls),
        *({"email": f"user{i}@example.com"} for i in range(5))]},
        smtp={"host": "127.0.0.1", "port": fault_smtp.port, "security": "None",
              "timeoutSeconds": 1, "connections": 1},
        delivery={"leaseSeconds": 2, "backoffSeconds": 1})
    code, log = delivery.run("unhealthy")
    assert code == 0, log
    assert '"result": "RelayUnhealthy"' in log
    assert per_recipient(fault_smtp) == {}
    counts = delivery.counts("unhealthy", spec)
    assert (counts["unknown"], counts["pending"], counts.get("sent", 0)) == (3, 5, 0)

    def degraded() -> dict | None:
        obj = client.CustomObjectsApi(delivery.api).get_namespaced_custom_object(
            "herald.dev", "v1alpha1", delivery.ns, "notificationcampaigns", "unhealthy")
        return next((c for c in obj.get("status", {}).get("conditions", [])
                     if c["type"] == "Degraded" and c["status"] == "True"), None)
    assert wait_for(degraded, timeout=30)["reason"] == "RelayUnhealthy"


def test_at_least_once_resends_an_unknown_with_one_message_id_up_to_max_attempts(
    delivery: Delivery, fault_smtp: Mailbox
) -> None:
    drop = "drop-after-data-1@example.com"
    spec = delivery.campaign("again-and-again", fault_smtp,
                             audience={"inline": [{"email": drop}]},
                             delivery={"guarantee": "AtLeastOnce", "maxAttempts": 3,
                                       "leaseSeconds": 4, "backoffSeconds": 1})
    for _ in range(2):  # a second run adds nothing: the recipient is settled
        code, log = delivery.run("again-and-again")
        assert code == 0, log
    copies = [e for e in fault_smtp.journal() if e["outcome"] == "dropped"]
    assert len(copies) == 3
    assert len({c["message_id"] for c in copies}) == 1
    entry = delivery.ledger("again-and-again", spec)[drop]
    assert (entry["s"], entry["a"]) == ("unknown", 3)


def test_a_recipient_removed_before_being_sent_is_withdrawn(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": "email\nstay@example.com\n"
                                                        "removed@example.com\n"})
    audience = {"configMaps": [{"name": "recipients", "key": "recipients.csv"}]}
    spec = delivery.campaign("shrinking", capture, audience=audience, smtp={
        "host": "127.0.0.1", "port": free_port(), "security": "None",  # nobody listens
        "timeoutSeconds": 1, "connections": 1})
    code, log = delivery.run("shrinking")
    assert code == 0 and '"result": "RelayUnavailable"' in log, log
    client.CoreV1Api(delivery.api).patch_namespaced_config_map("recipients", delivery.ns, {
        "data": {"recipients.csv": "email\nstay@example.com\n"}})
    delivery.campaign("shrinking", capture, audience=audience)  # the relay is back
    assert delivery.run("shrinking")[0] == 0
    assert per_recipient(capture) == {"stay@example.com": 1}
    assert delivery.ledger("shrinking", spec)["removed@example.com"]["s"] == "withdrawn"
    counts = delivery.counts("shrinking", spec)
    assert (counts["sent"], counts["withdrawn"], counts["pending"]) == (1, 1, 0)


def test_an_audience_that_fails_to_read_queues_nothing(
    delivery: Delivery, capture: Mailbox
) -> None:
    lines = "".join(f'{{"email": "user{i}@example.com"}}\n' for i in range(600))
    delivery.configmap("recipients", {"list.jsonl": lines + "not json\n"})
    spec = delivery.campaign("broken", capture, audience={
        "configMaps": [{"name": "recipients", "key": "list.jsonl"}]})
    code, log = delivery.run("broken")
    assert code == 4
    assert "spec.audience.configMaps[0]: line 601 is not JSON" in log
    assert delivery.ledger("broken", spec) == {}
    assert capture.journal() == []
