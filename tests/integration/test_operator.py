"""The operator on the real control plane: from kubectl apply to CronJobs, RBAC and status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from herald_dev.controlplane import ControlPlane
from herald_dev.services import Service, start_all, stop_all
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)

GROUP, VERSION, PLURAL = "herald.dev", "v1alpha1", "notificationcampaigns"
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri"]


def campaign(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "audience": {"inline": [{"email": "user1@example.com", "vars": {"name": "User One"}}]},
        "message": {"from": "Notices <no-reply@example.com>", "subject": "Usage report",
                    "text": "Hello {{ name }}"},
        "smtp": {"host": "smtp.example.com"},
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationCampaign",
            "metadata": {"name": name}, "spec": body}


class Cluster:
    """What a test reads and writes, as a user with kubectl would."""

    def __init__(self, api: client.ApiClient, cp: ControlPlane, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.cp = cp
        self.ns = namespace

    def apply(self, obj: dict[str, Any]) -> None:
        self.cp.kubectl("apply", "-n", self.ns, "-f", "-", input_=json.dumps(obj))

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name)
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_),
                    {})

    def cronjobs(self) -> dict[str, client.V1CronJob]:
        return {cj.metadata.name: cj for cj in self.batch.list_namespaced_cron_job(self.ns).items}

    def events(self, reason: str) -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(self.ns).items if e.reason == reason]

    def settled(self, name: str) -> dict[str, Any]:
        """The status once the operator has handled the latest generation."""
        def done() -> dict[str, Any] | None:
            obj = self.get(name)
            status = obj.get("status") or {}
            gen = obj["metadata"]["generation"]
            return status if status.get("observedGeneration") == gen else None
        return wait_for(done, timeout=30)


@pytest.fixture
def k8s(api: client.ApiClient, control_plane: ControlPlane, namespace: str) -> Cluster:
    return Cluster(api, control_plane, namespace)


def test_apply_yields_the_windows_cronjobs_and_status(operator: Service, k8s: Cluster) -> None:
    k8s.apply(campaign(
        "usage-notice-2026", timeZone="Asia/Seoul", resumeEvery="15m",
        windows=[{"days": WEEKDAYS, "start": "09:00", "end": "18:00"},
                 {"days": ["Sat"], "start": "22:10", "end": "00:30"}],
        delivery={"parallelism": 3}))
    status = k8s.settled("usage-notice-2026")
    names = ["usage-notice-2026-w0", "usage-notice-2026-w1-0", "usage-notice-2026-w1-1"]
    assert status["cronJobs"] == names
    assert status["phase"] == "Scheduled"
    assert status["nextWindowStart"].endswith("+09:00")
    assert k8s.condition("usage-notice-2026", "Ready")["status"] == "True"
    cronjobs = k8s.cronjobs()
    assert sorted(cronjobs) == names
    w0 = cronjobs["usage-notice-2026-w0"]
    assert w0.spec.schedule == "0,15,30,45 9-17 * * 1,2,3,4,5"
    assert w0.spec.time_zone == "Asia/Seoul"
    assert w0.spec.concurrency_policy == "Forbid"
    assert w0.spec.starting_deadline_seconds == 900
    assert w0.spec.suspend is False
    assert [s.spec.schedule for n, s in sorted(cronjobs.items()) if "-w1-" in n] == [
        "10,25,40,55 22-23 * * 6", "10,25 0 * * 0"]
    owner = w0.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == (
        "NotificationCampaign", "usage-notice-2026", True)
    job = w0.spec.job_template.spec
    assert job.parallelism == 3
    assert job.active_deadline_seconds == 9 * 3600 + 2 * 30 + 60
    pod = job.template.spec
    assert pod.service_account_name == "herald-job-usage-notice-2026"
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.run_as_user > 0
    assert pod.termination_grace_period_seconds > 30
    container = pod.containers[0]
    assert container.command == ["herald", "job"]
    assert container.security_context.read_only_root_filesystem is True
    env = {e.name: e for e in container.env}
    assert env["HERALD_CAMPAIGN"].value == "usage-notice-2026"
    assert env["HERALD_NAMESPACE"].value_from.field_ref.field_path == "metadata.namespace"
    assert "HERALD_REDIS_URL" in env
    assert len(k8s.events("Created")) == 1


def test_patching_windows_updates_and_removes_cronjobs(operator: Service, k8s: Cluster) -> None:
    k8s.apply(campaign("notice", windows=[
        {"days": ["Mon"], "start": "09:00", "end": "10:00"},
        {"days": ["Tue"], "start": "09:00", "end": "10:00"}]))
    assert k8s.settled("notice")["cronJobs"] == ["notice-w0", "notice-w1"]
    k8s.patch("notice", {"windows": [{"days": ["Wed"], "start": "13:00", "end": "14:00"}],
                         "resumeEvery": "30m"})
    assert k8s.settled("notice")["cronJobs"] == ["notice-w0"]
    cronjobs = wait_for(lambda: (cj := k8s.cronjobs()) and len(cj) == 1 and cj, timeout=30)
    assert cronjobs["notice-w0"].spec.schedule == "0,30 13 * * 3"
    assert len(k8s.events("Updated")) == 1


def test_suspend_and_resume_round_trip(operator: Service, k8s: Cluster) -> None:
    k8s.apply(campaign("notice", windows=[{"days": WEEKDAYS, "start": "09:00", "end": "18:00"}]))
    k8s.settled("notice")
    k8s.patch("notice", {"suspend": True})
    assert k8s.settled("notice")["phase"] == "Suspended"
    assert all(cj.spec.suspend for cj in k8s.cronjobs().values())
    assert k8s.condition("notice", "Suspended")["status"] == "True"
    k8s.patch("notice", {"suspend": False})
    assert k8s.settled("notice")["phase"] == "Scheduled"
    assert not any(cj.spec.suspend for cj in k8s.cronjobs().values())
    assert len(k8s.events("Suspended")) == 1
    assert len(k8s.events("Resumed")) == 1


def test_a_run_started_by_hand_shows_as_running_at_once(
    start_operator: Callable[..., Service], k8s: Cluster
) -> None:
    start_operator("--resync-seconds", "600")  # the Job's own events, not a resync
    k8s.apply(campaign("notice"))
    assert k8s.settled("notice")["phase"] == "Scheduled"
    k8s.cp.kubectl("create", "job", "--from=cronjob/notice-w0", "notice-now", "-n", k8s.ns)
    started = time.monotonic()
    wait_for(lambda: k8s.status("notice").get("phase") == "Running", 10)  # its pod waits
    print(f"Running {time.monotonic() - started:.2f} s after kubectl create job")
    k8s.cp.kubectl("delete", "job", "notice-now", "-n", k8s.ns)
    wait_for(lambda: k8s.status("notice").get("phase") == "Scheduled", 10)


def test_cluster_halt_stops_every_campaign_and_its_undo_resumes_them(
    operator: Service, k8s: Cluster, api: client.ApiClient, request: pytest.FixtureRequest
) -> None:
    k8s.apply(campaign("one"))
    k8s.apply(campaign("two", suspend=True))
    k8s.settled("one")
    k8s.settled("two")
    halt = ["patch", "deliveryhalt", "cluster", "--type", "merge", "-p"]
    request.addfinalizer(lambda: k8s.cp.kubectl(*halt, '{"spec":{"halted":false}}'))
    k8s.cp.kubectl(*halt, '{"spec":{"halted":true,"reason":"incident 42"}}')
    wait_for(lambda: all(k8s.status(n).get("phase") == "Halted" for n in ("one", "two")), 30)
    # While halted, the halt object cannot be deleted (that would lift the halt silently).
    with pytest.raises(RuntimeError, match="undo the halt first"):
        k8s.cp.kubectl("delete", "deliveryhalt", "cluster")
    assert all(cj.spec.suspend for cj in k8s.cronjobs().values())
    halted = k8s.condition("one", "Halted")
    assert (halted["status"], halted["reason"], halted["message"]) == (
        "True", "ClusterHalt", "incident 42")
    k8s.cp.kubectl(*halt, '{"spec":{"halted":false}}')
    wait_for(lambda: k8s.status("one").get("phase") == "Scheduled", 30)
    assert [e.message for e in k8s.events("Halted")] == ["delivery stopped: incident 42"] * 2
    # Undoing the halt leaves a campaign's own suspend alone.
    wait_for(lambda: k8s.status("two").get("phase") == "Suspended", 30)
    cronjobs = k8s.cronjobs()
    assert cronjobs["one-w0"].spec.suspend is False
    assert cronjobs["two-w0"].spec.suspend is True


def test_there_is_one_halt_object_and_the_operator_keeps_it(
    operator: Service, k8s: Cluster
) -> None:
    with pytest.raises(RuntimeError, match="must be named 'cluster'"):
        k8s.apply({"apiVersion": f"{GROUP}/{VERSION}", "kind": "DeliveryHalt",
                   "metadata": {"name": "incident"}, "spec": {"halted": True}})
    k8s.cp.kubectl("delete", "deliveryhalt", "cluster")  # not halted: allowed
    wait_for(lambda: "cluster" in k8s.cp.kubectl("get", "deliveryhalts", "-o", "name"), 30)


def test_a_deleted_halt_object_comes_back_at_the_resync_not_at_once(
    start_operator: Callable[..., Service], k8s: Cluster
) -> None:
    # `helm uninstall` deletes the halt object a moment before the operator: an operator
    # that put it back at once would leave an object behind that no release owns.
    start_operator("--resync-seconds", "600")
    k8s.cp.kubectl("delete", "deliveryhalt", "cluster")
    time.sleep(3)
    assert "cluster" not in k8s.cp.kubectl("get", "deliveryhalts", "-o", "name")
    start_operator()  # one that starts puts it back (and the resync of the other would)
    wait_for(lambda: "cluster" in k8s.cp.kubectl("get", "deliveryhalts", "-o", "name"), 30)


def test_deleting_a_campaign_collects_what_it_owned(
    operator: Service, k8s: Cluster, api: client.ApiClient
) -> None:
    k8s.apply(campaign("notice"))
    k8s.settled("notice")
    rbac = client.RbacAuthorizationV1Api(api)
    # Nothing cluster-scoped per campaign: the halt is readable through the install's one
    # binding, so owner references collect all of a campaign's objects.
    assert not rbac.list_cluster_role_binding(
        label_selector=f"herald.dev/campaign-namespace={k8s.ns}").items
    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL, "notice")
    wait_for(lambda: not k8s.cronjobs(), timeout=60)
    wait_for(lambda: not [s for s in k8s.core.list_namespaced_service_account(k8s.ns).items
                          if s.metadata.name.startswith("herald-job-")], timeout=60)
    wait_for(lambda: not rbac.list_namespaced_role_binding(
        k8s.ns, label_selector="app.kubernetes.io/managed-by=herald-operator").items, 60)


def test_a_hand_deleted_or_edited_cronjob_is_repaired(operator: Service, k8s: Cluster) -> None:
    k8s.apply(campaign("notice"))
    k8s.settled("notice")
    k8s.batch.delete_namespaced_cron_job("notice-w0", k8s.ns)
    wait_for(lambda: "notice-w0" in k8s.cronjobs(), timeout=30)
    k8s.batch.patch_namespaced_cron_job("notice-w0", k8s.ns, {"spec": {"schedule": "1 1 * * *"}})
    wait_for(lambda: k8s.cronjobs()["notice-w0"].spec.schedule == "*/15 * * * *", timeout=30)


@pytest.mark.parametrize(("spec", "field"), [
    ({"timeZone": "Mars/Olympus_Mons"}, "spec.timeZone"),
    ({"audience": {"configMaps": [{"name": "absent", "key": "recipients.csv"}]}},
     "spec.audience.configMaps[0].name"),
    ({"audience": {"configMaps": [{"name": "recipients", "key": "wrong.csv"}]}},
     "spec.audience.configMaps[0]"),
    ({"audience": {"secrets": [{"name": "absent", "key": "list.jsonl"}]}},
     "spec.audience.secrets[0].name"),
    ({"smtp": {"host": "smtp.example.com", "credentialsSecretRef": {"name": "absent"}}},
     "spec.smtp.credentialsSecretRef.name"),
])
def test_what_admission_cannot_check_makes_the_campaign_invalid(
    operator: Service, k8s: Cluster, spec: dict[str, Any], field: str
) -> None:
    k8s.core.create_namespaced_config_map(k8s.ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="recipients"),
        data={"recipients.csv": "email\nuser1@example.com\n"}))
    k8s.apply(campaign("notice", **spec))
    status = k8s.settled("notice")
    assert status["phase"] == "Invalid"
    invalid = k8s.condition("notice", "Invalid")
    assert invalid["status"] == "True"
    assert invalid["message"].startswith(field + ":") or invalid["message"].startswith(field)
    assert k8s.cronjobs() == {}
    assert [e.message for e in k8s.events("InvalidSpec")] == [invalid["message"]]


def test_an_invalid_campaign_becomes_valid_when_its_configmap_appears(
    operator: Service, k8s: Cluster
) -> None:
    k8s.apply(campaign("notice", audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]}))
    assert k8s.settled("notice")["phase"] == "Invalid"
    k8s.core.create_namespaced_config_map(k8s.ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="recipients"),
        data={"recipients.csv": "email\nuser1@example.com\n"}))
    wait_for(lambda: k8s.status("notice").get("phase") == "Scheduled", timeout=30)
    assert list(k8s.cronjobs()) == ["notice-w0"]
    wait_for(lambda: k8s.events("SpecValid"), timeout=10)


ADMISSION_CASES = [
    ({"windows": [{"days": ["Mon"], "start": "09:00", "end": "09:00"}]}, "spec.windows[0].end"),
    ({"windows": [{"days": [], "start": "09:00", "end": "10:00"}]}, "spec.windows[0].days"),
    ({"windows": [{"days": ["Funday"], "start": "09:00", "end": "10:00"}]},
     "spec.windows[0].days[0]"),
    ({"windows": [{"days": ["Mon"], "start": "9am", "end": "10:00"}]}, "spec.windows[0].start"),
    ({"windows": [{"days": ["Mon"], "start": "09:00", "end": "24:00"}]}, "spec.windows[0].end"),
    ({"resumeEvery": "7m"}, "spec.resumeEvery"),
    ({"audience": {}}, "spec.audience"),
    ({"message": {"from": "a@example.com", "subject": "s"}}, "spec.message"),
    ({"message": {"from": "a@example.com", "subject": "s\r\nBcc: x@example.com", "text": "t"}},
     "spec.message.subject"),
    ({"message": {"from": "a@example.com\n", "subject": "s", "text": "t"}}, "spec.message.from"),
    ({"message": {"from": "a@example.com", "subject": "s\u2028Bcc: x@example.com", "text": "t"}},
     "spec.message.subject"),
    ({"message": {"from": "a@example.com", "replyTo": "b@example.com\nX: y", "subject": "s",
                  "text": "t"}}, "spec.message.replyTo"),
    ({"message": {"from": "a@example.com", "subject": "s", "text": "t",
                  "headers": {"Bcc": "x@example.com"}}}, "spec.message.headers"),
    ({"message": {"from": "a@example.com", "subject": "s", "text": "t",
                  "headers": {"Content-Type": "text/plain"}}}, "spec.message.headers"),
    ({"message": {"from": "a@example.com", "subject": "s", "text": "t",
                  "headers": {"Bad Name": "x"}}}, "spec.message.headers"),
    ({"message": {"from": "a@example.com", "subject": "s", "text": "t",
                  "headers": {"X-Tag": "a\nBcc: x@example.com"}}}, "spec.message.headers.X-Tag"),
    ({"smtp": {"host": "h", "port": 70000}}, "spec.smtp.port"),
    ({"smtp": {"host": "h", "security": "SSL"}}, "spec.smtp.security"),
    ({"smtp": {"host": "h", "timeoutSeconds": 0}}, "spec.smtp.timeoutSeconds"),
    ({"smtp": {"host": "h", "connections": 101}}, "spec.smtp.connections"),
    ({"delivery": {"guarantee": "ExactlyOnce"}}, "spec.delivery.guarantee"),
    ({"delivery": {"dedupeKey": "k" * 129}}, "spec.delivery.dedupeKey"),
    ({"delivery": {"maxAttempts": 11}}, "spec.delivery.maxAttempts"),
    ({"delivery": {"backoffSeconds": 0}}, "spec.delivery.backoffSeconds"),
    ({"delivery": {"ratePerSecond": 10001}}, "spec.delivery.ratePerSecond"),
    ({"delivery": {"parallelism": 0}}, "spec.delivery.parallelism"),
    ({"delivery": {"leaseSeconds": 3601}}, "spec.delivery.leaseSeconds"),
    ({"smtp": {"host": "h", "timeoutSeconds": 40}, "delivery": {"leaseSeconds": 60}},
     "spec.delivery.leaseSeconds"),
]


@pytest.mark.parametrize(("spec", "field"), ADMISSION_CASES)
def test_admission_refuses_bad_input_naming_the_field(
    herald_installed: Path, k8s: Cluster, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(RuntimeError) as refused:
        k8s.apply(campaign("bad", **spec))
    assert field in str(refused.value)
    assert k8s.custom.list_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL)["items"] == []


def test_an_operator_restart_resumes_without_duplicating_objects(
    start_operator: Callable[..., Service], k8s: Cluster
) -> None:
    first = start_operator()
    k8s.apply(campaign("notice"))
    k8s.settled("notice")
    uid = k8s.cronjobs()["notice-w0"].metadata.uid
    first.stop()
    start_operator()
    # Edits made while it was down are picked up on resume.
    k8s.patch("notice", {"resumeEvery": "5m"})
    k8s.settled("notice")
    wait_for(lambda: k8s.cronjobs()["notice-w0"].spec.schedule == "*/5 * * * *", timeout=30)
    cronjobs = k8s.cronjobs()
    assert list(cronjobs) == ["notice-w0"]
    assert cronjobs["notice-w0"].metadata.uid == uid  # the same object, updated in place
    assert len(k8s.events("Created")) == 1


def test_two_operators_make_one_set_and_the_survivor_takes_over(
    start_operator: Callable[..., Service], k8s: Cluster
) -> None:
    leader = start_operator("--priority", "200")
    start_operator("--priority", "100")
    k8s.apply(campaign("one", windows=[{"days": ["Mon"], "start": "09:00", "end": "10:00"},
                                       {"days": ["Tue"], "start": "09:00", "end": "10:00"}]))
    k8s.settled("one")
    assert sorted(k8s.cronjobs()) == ["one-w0", "one-w1"]
    assert len(k8s.events("Created")) == 1
    leader.stop()
    k8s.apply(campaign("two"))
    assert k8s.settled("two")["cronJobs"] == ["two-w0"]
    assert sorted(k8s.cronjobs()) == ["one-w0", "one-w1", "two-w0"]


def can_i(cp: ControlPlane, namespace: str, account: str, *what: str) -> bool:
    try:
        answer = cp.kubectl("auth", "can-i", *what, "-n", namespace,
                            f"--as=system:serviceaccount:{namespace}:{account}")
    except RuntimeError as err:
        answer = str(err)
    return answer.strip().endswith("yes")


def test_job_pods_may_do_exactly_what_the_contract_lists(operator: Service, k8s: Cluster) -> None:
    for name, data in (("vip", {"list.jsonl": '{"email": "vip@example.com"}'}),
                       ("smtp-credentials", {"username": "u", "password": "p"}),
                       ("other", {"x": "y"})):
        k8s.core.create_namespaced_secret(k8s.ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data=data))
    k8s.apply(campaign("mine", audience={"secrets": [{"name": "vip", "key": "list.jsonl"}],
                                         "inline": [{"email": "a@example.com"}]},
                       smtp={"host": "h", "credentialsSecretRef": {"name": "smtp-credentials"}}))
    k8s.apply(campaign("theirs"))
    assert k8s.settled("mine")["phase"] == "Scheduled"
    k8s.settled("theirs")
    sa, cp, ns = "herald-job-mine", k8s.cp, k8s.ns
    assert can_i(cp, ns, sa, "get", "notificationcampaigns.herald.dev/mine")
    assert can_i(cp, ns, sa, "watch", "notificationcampaigns.herald.dev/mine")
    assert can_i(cp, ns, sa, "patch", "notificationcampaigns.herald.dev/mine", "--subresource",
                 "status")
    assert can_i(cp, ns, sa, "get", "secrets/vip")
    assert can_i(cp, ns, sa, "get", "secrets/smtp-credentials")
    assert can_i(cp, ns, sa, "create", "events")
    assert can_i(cp, ns, sa, "watch", "deliveryhalts.herald.dev/cluster")
    assert not can_i(cp, ns, sa, "get", "notificationcampaigns.herald.dev/theirs")
    assert not can_i(cp, ns, sa, "patch", "notificationcampaigns.herald.dev/mine")
    assert not can_i(cp, ns, sa, "get", "secrets/other")
    assert not can_i(cp, ns, sa, "list", "secrets")
    assert not can_i(cp, ns, sa, "get", "configmaps/anything")
    assert not can_i(cp, ns, sa, "patch", "deliveryhalts.herald.dev/cluster")
    assert not can_i(cp, ns, sa, "create", "pods")


def test_operator_says_clearly_when_the_crd_is_not_installed(tmp_path: Path) -> None:
    bare = ControlPlane(tmp_path / "bare")
    bare.prepare()
    try:
        start_all(bare.services[:2], attached=True, timeout=60)
        done = subprocess.run(
            [sys.executable, "-m", "herald_dev.cli", "operator", "--standalone"],
            env={"KUBECONFIG": str(bare.kubeconfig), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60)
    finally:
        stop_all(bare.services[:2])
    assert done.returncode == 2
    assert "notificationcampaigns.herald.dev is not installed" in done.stderr
    assert "-f manifests/crds/" in done.stderr
