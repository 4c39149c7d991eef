"""The Kubernetes client configuration every Herald process uses."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from herald_api import API_VERSION

log = logging.getLogger("herald")


def api_client() -> client.ApiClient:
    """In-cluster configuration in a pod, KUBECONFIG (or ~/.kube/config) elsewhere."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def post_event(core: client.CoreV1Api, campaign_meta: dict[str, Any], component: str,
               type_: str, reason: str, message: str) -> None:
    """An Event on a campaign; losing one is logged, never fatal."""
    meta = campaign_meta
    now = dt.datetime.now(dt.UTC)
    body = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.",
                                     namespace=meta["namespace"]),
        involved_object=client.V1ObjectReference(
            api_version=API_VERSION, kind="NotificationCampaign", name=meta["name"],
            namespace=meta["namespace"], uid=meta["uid"]),
        type=type_, reason=reason, message=message[:1024],
        first_timestamp=now, last_timestamp=now, count=1,
        source=client.V1EventSource(component=component),
        reporting_component=component, reporting_instance=component)
    try:
        core.create_namespaced_event(meta["namespace"], body)
    except ApiException as err:
        log.warning("event not posted", extra={"reason": reason, "status": err.status})
