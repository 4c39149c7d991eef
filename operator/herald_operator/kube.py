"""Every call the operator makes to the Kubernetes API, and which errors are fine.

Objects are written with server-side apply under one field manager, so creating,
updating and repairing an object that someone edited by hand are the same call.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from herald_api import API_VERSION
from herald_api.kubeclient import post_event
from herald_api.models import HALT_NAME
from herald_api.names import LABEL_CAMPAIGN, LABEL_NAMESPACE, MANAGED_BY, fit

FIELD_MANAGER = "herald-operator"
log = logging.getLogger("herald.operator")


class Kube:
    def __init__(self, api: client.ApiClient, namespaces: list[str] | None = None) -> None:
        self.api = api
        self.namespaces = namespaces or []  # the watched ones; none: the whole cluster
        self.dynamic = DynamicClient(api)
        self.core = client.CoreV1Api(api)

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self._resource(obj["apiVersion"], obj["kind"]).server_side_apply(
            body=obj, name=meta["name"], namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER, force_conflicts=True)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        with contextlib.suppress(NotFoundError):  # already gone: what we wanted
            self._resource(api_version, kind).delete(name=name, namespace=namespace)

    def owned(self, api_version: str, kind: str, namespace: str | None,
              campaign_namespace: str, campaign: str) -> list[dict[str, Any]]:
        selector = (f"app.kubernetes.io/managed-by={MANAGED_BY},"
                    f"{LABEL_CAMPAIGN}={fit(campaign, 63)},"
                    f"{LABEL_NAMESPACE}={campaign_namespace}")
        found = self._resource(api_version, kind).get(namespace=namespace,
                                                      label_selector=selector)
        return [item.to_dict() for item in found.items]

    def campaigns(self) -> list[dict[str, Any]]:
        resource = self._resource(API_VERSION, "NotificationCampaign")
        if not self.namespaces:
            return [item.to_dict() for item in resource.get().items]
        return [item.to_dict() for namespace in self.namespaces
                for item in resource.get(namespace=namespace).items]

    def campaign(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._resource(API_VERSION, "NotificationCampaign").get(
                name=name, namespace=namespace)
        except NotFoundError:
            return None
        return dict(found.to_dict())

    def halt(self) -> dict[str, Any] | None:
        """The DeliveryHalt's spec, or None when the object does not exist."""
        try:
            found = self._resource(API_VERSION, "DeliveryHalt").get(name=HALT_NAME)
        except NotFoundError:
            return None
        return dict(found.to_dict().get("spec") or {})

    def ensure_halt_object(self) -> None:
        """Create the DeliveryHalt `cluster` (not halted) unless it exists; never change it."""
        try:
            self._resource(API_VERSION, "DeliveryHalt").create(body={
                "apiVersion": API_VERSION, "kind": "DeliveryHalt",
                "metadata": {"name": HALT_NAME}, "spec": {"halted": False}})
        except ApiException as err:
            if err.status != 409:
                raise

    def source_data(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's or Secret's data as text, or None when it does not exist."""
        try:
            if kind == "ConfigMap":
                return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
            data = self.core.read_namespaced_secret(name, namespace).data or {}
            return {k: base64.b64decode(v).decode("utf-8", errors="replace")
                    for k, v in data.items()}
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_campaign_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._resource(API_VERSION, "NotificationCampaign").status.patch(
            body={"status": status}, name=name, namespace=namespace,
            content_type="application/merge-patch+json")

    def event(self, campaign: dict[str, Any], type_: str, reason: str, message: str) -> None:
        post_event(self.core, campaign["metadata"], FIELD_MANAGER, type_, reason, message)
