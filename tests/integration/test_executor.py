"""The local executor plays the kubelet's part: binds pods, runs them as processes with
their own ServiceAccount's token and their environment, reports phases, stops them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from herald_api.names import MANAGED_BY
from tests.conftest import Mailbox, wait_for
from tests.integration.conftest import Delivery

pytestmark = pytest.mark.timeout(120)

# Run inside the pod: what may this pod do, and who does the API think it is?
PROBE = textwrap.dedent("""
    import base64, json, os
    import yaml
    from kubernetes import client, config
    api = config.new_client_from_config()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    def attempt(call):
        try:
            call()
            return 200
        except client.ApiException as err:
            return err.status
    ns = os.environ["HERALD_NAMESPACE"]
    token = yaml.safe_load(open(os.environ["KUBECONFIG"]))["users"][0]["user"]["token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    print(json.dumps({
        "own_campaign": attempt(lambda: custom.get_namespaced_custom_object(
            "herald.dev", "v1alpha1", ns, "notificationcampaigns", "notice")),
        "other_campaign": attempt(lambda: custom.get_namespaced_custom_object(
            "herald.dev", "v1alpha1", ns, "notificationcampaigns", "other")),
        "list_secrets": attempt(lambda: core.list_namespaced_secret(ns)),
        "token_pod": claims["kubernetes.io"]["pod"]["name"],
        "env": {k: v for k, v in os.environ.items() if k.startswith("PROBE_")},
        "namespace": ns,
    }))
""")


def job(name: str, account: str, command: list[str], **pod_spec: Any) -> dict[str, Any]:
    """A Job of one pod, as Herald's CronJobs make them: the executor runs only Job pods."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {
        "backoffLimit": 0, "template": {"metadata": {"labels": {
            "app.kubernetes.io/managed-by": MANAGED_BY, "probe": name}},
            "spec": {"serviceAccountName": account, "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "herald:local", "command": command,
                                     "env": [
            {"name": "HERALD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "PROBE_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "PROBE_LABEL",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['probe']"}}},
            {"name": "PROBE_SECRET",
             "valueFrom": {"secretKeyRef": {"name": "probe", "key": "word"}}},
            {"name": "PROBE_MAP",
             "valueFrom": {"configMapKeyRef": {"name": "probe", "key": "word"}}},
            {"name": "PROBE_EXPANDED", "value": "$(PROBE_POD)-x $$(PROBE_POD)"},
        ]}], **pod_spec}}}}


def start(delivery: Delivery, name: str, command: list[str], **pod_spec: Any) -> str:
    """Create the Job `name` and return the name of its pod, once the job controller made it."""
    client.BatchV1Api(delivery.api).create_namespaced_job(
        delivery.ns, job(name, "herald-job-notice", command, **pod_spec))
    core = client.CoreV1Api(delivery.api)
    return str(wait_for(lambda: next((p.metadata.name for p in core.list_namespaced_pod(
        delivery.ns, label_selector=f"job-name={name}").items), None), timeout=30))


def phase(api: client.ApiClient, namespace: str, name: str) -> str:
    return str(client.CoreV1Api(api).read_namespaced_pod(name, namespace).status.phase)


def output(executor: Path, namespace: str, name: str) -> str:
    return (executor / "pods" / namespace / name / "main.log").read_text()


def campaign_and_probe_sources(delivery: Delivery, capture: Mailbox) -> None:
    """A campaign (so its pods' ServiceAccount) and what the probe pods' env names."""
    delivery.campaign("notice", capture)
    delivery.secret("probe", {"word": "from-a-secret"})
    delivery.configmap("probe", {"word": "from-a-configmap"})


def test_a_pod_runs_as_its_own_service_account_with_its_environment(
    executor: Path, delivery: Delivery, capture: Mailbox
) -> None:
    campaign_and_probe_sources(delivery, capture)
    delivery.campaign("other", capture)
    core = client.CoreV1Api(delivery.api)
    stray = job("stray", "herald-job-notice", ["true"])["spec"]["template"]
    core.create_namespaced_pod(delivery.ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray", **stray["metadata"]},
        "spec": stray["spec"]})
    pods = [start(delivery, name, ["python", "-c", PROBE]) for name in ("probe-a", "probe-b")]
    for name in pods:
        ended = wait_for(lambda n=name: phase(delivery.api, delivery.ns, n) in (
            "Succeeded", "Failed") and phase(delivery.api, delivery.ns, n), timeout=60)
        assert ended == "Succeeded", output(executor, delivery.ns, name)
    seen = {name: json.loads(output(executor, delivery.ns, name).splitlines()[-1])
            for name in pods}
    for (name, found), label in zip(seen.items(), ("probe-a", "probe-b"), strict=True):
        assert found["own_campaign"] == 200
        assert found["other_campaign"] == 403, "a pod may read only its own campaign"
        assert found["list_secrets"] == 403, "a pod may read only the Secrets it names"
        assert found["token_pod"] == name, "each pod has a token bound to itself"
        assert found["namespace"] == delivery.ns
        assert found["env"] == {"PROBE_POD": name, "PROBE_LABEL": label,
                                "PROBE_SECRET": "from-a-secret", "PROBE_MAP": "from-a-configmap",
                                "PROBE_EXPANDED": f"{name}-x $(PROBE_POD)"}
    bound = core.read_namespaced_pod(pods[0], delivery.ns)
    assert bound.spec.node_name == "herald-local"
    assert bound.status.container_statuses[0].state.terminated.exit_code == 0
    assert core.read_namespaced_pod("stray", delivery.ns).spec.node_name is None, (
        "a pod no Job controls is not run, whatever its labels")


def test_a_deleted_pod_gets_sigterm_then_sigkill_after_its_grace(
    executor: Path, delivery: Delivery, capture: Mailbox
) -> None:
    campaign_and_probe_sources(delivery, capture)
    stubborn = ("import signal, time\n"
                "signal.signal(signal.SIGTERM, lambda *_: print('got SIGTERM', flush=True))\n"
                "print('running', flush=True)\n"
                "while True: time.sleep(0.1)\n")
    core = client.CoreV1Api(delivery.api)
    name = start(delivery, "stubborn", ["python", "-c", stubborn],
                 terminationGracePeriodSeconds=2)
    wait_for(lambda: phase(delivery.api, delivery.ns, name) == "Running", timeout=60)
    wait_for(lambda: "running" in output(executor, delivery.ns, name), timeout=30)
    told = time.monotonic()
    core.delete_namespaced_pod(name, delivery.ns)

    def gone() -> bool:
        try:
            core.read_namespaced_pod(name, delivery.ns)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=20, interval=0.1)
    took = time.monotonic() - told
    print(f"gone {took:.1f} s after the delete (grace 2 s)")
    assert "got SIGTERM" in output(executor, delivery.ns, name)
    assert 2 <= took < 10, "SIGTERM was ignored: only SIGKILL after the grace ends it"


def test_active_deadline_fails_the_pod(
    executor: Path, delivery: Delivery, capture: Mailbox
) -> None:
    campaign_and_probe_sources(delivery, capture)
    name = start(delivery, "slow", ["sleep", "60"], activeDeadlineSeconds=2,
                 terminationGracePeriodSeconds=1)
    wait_for(lambda: phase(delivery.api, delivery.ns, name) == "Failed", timeout=30)
    status = client.CoreV1Api(delivery.api).read_namespaced_pod(name, delivery.ns).status
    assert status.reason == "DeadlineExceeded"


def test_a_missing_secret_keeps_the_pod_waiting_with_the_reason(
    executor: Path, delivery: Delivery, capture: Mailbox
) -> None:
    delivery.campaign("notice", capture)
    core = client.CoreV1Api(delivery.api)
    name = start(delivery, "waiting", ["true"])

    def waiting() -> Any:
        statuses = core.read_namespaced_pod(name, delivery.ns).status.container_statuses
        return statuses and statuses[0].state.waiting
    state = wait_for(waiting, timeout=30)
    assert state.reason == "CreateContainerConfigError"
    assert "'probe'" in state.message


def test_stopping_the_executor_leaves_no_process_and_fails_its_pods(
    executor: Path, delivery: Delivery, capture: Mailbox
) -> None:
    campaign_and_probe_sources(delivery, capture)
    stubborn = start(delivery, "stubborn", [
        "sh", "-c", "trap '' TERM; sleep 2971 & sleep 2972; wait"])
    # Like `herald job`, which exits 0 on SIGTERM: cut short, it did not succeed.
    polite = start(delivery, "polite", ["sh", "-c", "trap 'exit 0' TERM; sleep 2973 & wait"])
    for name in (stubborn, polite):
        wait_for(lambda n=name: phase(delivery.api, delivery.ns, n) == "Running", timeout=60)

    def sleeping() -> list[str]:
        done = subprocess.run(["pgrep", "-f", "^sleep 297[123]$"], capture_output=True,
                              text=True)
        return done.stdout.split()

    wait_for(lambda: len(sleeping()) == 3, timeout=10, interval=0.1)
    pid = int((executor / "local-executor.pid").read_text())
    os.kill(pid, signal.SIGTERM)  # as `herald dev down` does
    wait_for(lambda: not sleeping(), timeout=15, interval=0.2)
    # Each pod's phase is written once its processes are gone, a moment after the last one.
    wait_for(lambda: [phase(delivery.api, delivery.ns, name) for name in (stubborn, polite)]
             == ["Failed", "Failed"], timeout=10)
    status = client.CoreV1Api(delivery.api).read_namespaced_pod(polite, delivery.ns).status
    assert status.container_statuses[0].state.terminated.exit_code == 0
    assert status.reason == "Terminated"
