"""The local control plane is a real Kubernetes: API objects, CRDs, controllers."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from tests.conftest import wait_for

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.herald.dev"},
    "spec": {
        "group": "smoke.herald.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {"seen": {"type": "integer"}}},
                },
            }},
        }],
    },
}


def test_configmap_round_trip_in_a_fresh_namespace(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    assert core.read_namespace(namespace).status.phase == "Active"
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="recipients"),
        data={"recipients.csv": "email,name\nuser1@example.com,User One\n"}))
    read = core.read_namespaced_config_map("recipients", namespace)
    assert read.data["recipients.csv"].splitlines()[1] == "user1@example.com,User One"


def test_custom_resource_status_is_a_subresource(api: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as err:
        if err.status != 409:
            raise
    custom = client.CustomObjectsApi(api)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(WIDGET_CRD["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True"
                   for c in crd.status.conditions or [])

    wait_for(established, timeout=30)
    args = ("smoke.herald.dev", "v1", namespace, "widgets")
    custom.create_namespaced_custom_object(*args, {
        "apiVersion": "smoke.herald.dev/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3}, "status": {"seen": 99}})
    # Status given on create is dropped: only the status subresource writes it.
    assert "status" not in custom.get_namespaced_custom_object(*args, "w")
    custom.patch_namespaced_custom_object_status(*args, "w", {"status": {"seen": 3}})
    widget = custom.get_namespaced_custom_object(*args, "w")
    assert widget["status"] == {"seen": 3}
    assert widget["spec"] == {"size": 3}


@pytest.mark.timeout(240)
def test_cronjob_yields_a_job_through_the_controller_manager(
    api: client.ApiClient, namespace: str
) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_cron_job(namespace, client.V1CronJob(
        metadata=client.V1ObjectMeta(name="every-minute"),
        spec=client.V1CronJobSpec(
            schedule="* * * * *",
            job_template=client.V1JobTemplateSpec(spec=client.V1JobSpec(
                template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[client.V1Container(name="c", image="herald:test",
                                                   command=["true"])]))))),
    ))
    started = time.monotonic()
    jobs = wait_for(lambda: batch.list_namespaced_job(namespace).items, timeout=150, interval=2)
    print(f"first Job after {time.monotonic() - started:.0f} s")
    owner = jobs[0].metadata.owner_references[0]
    assert (owner.kind, owner.name) == ("CronJob", "every-minute")
    # The job controller made its pod (no kubelet runs it, so it stays Pending).
    core = client.CoreV1Api(api)
    pods = wait_for(lambda: core.list_namespaced_pod(namespace).items, timeout=30)
    assert pods[0].metadata.labels["job-name"] == jobs[0].metadata.name
