"""The Kubernetes client configuration every Herald process uses."""

from __future__ import annotations

from kubernetes import client, config


def api_client() -> client.ApiClient:
    """In-cluster configuration in a pod, KUBECONFIG (or ~/.kube/config) elsewhere."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
