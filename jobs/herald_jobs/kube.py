"""The worker's few reads of the Kubernetes API (its ServiceAccount allows no more)."""

from __future__ import annotations

from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from herald_api import GROUP, VERSION
from herald_api.kubeclient import post_event
from herald_api.models import CampaignSpec
from herald_jobs.audience import AudienceError, AudienceReader, secret_text

PLURAL = "notificationcampaigns"


class CampaignSource:
    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace, self.name = namespace, name

    def read(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name))

    def patch_status(self, status: dict[str, Any], resource_version: str | None = None) -> None:
        """A merge patch of status; with a resourceVersion, refused (409) if it changed."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, self.name, body)

    def record_loss(self, body: dict[str, Any], loss: dict[str, Any]) -> dict[str, Any]:
        """Write `loss` as status.ledgerLoss unless status already records the same loss (an
        earlier run's, or a peer's that wrote first); return the loss in status, so that
        every pod names one id to acknowledge. Another loss, or Redis changed since the
        recorded one was shown, is written with its new id."""
        while True:
            found = (body.get("status") or {}).get("ledgerLoss") or {}
            if (found.get("expected"), found.get("found")) == (loss["expected"], loss["found"]):
                return dict(found)
            try:
                self.patch_status({"ledgerLoss": loss}, body["metadata"]["resourceVersion"])
                return loss
            except ApiException as err:
                if err.status != 409:
                    raise
            body = self.read()  # changed since: perhaps a peer's record of this loss

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        post_event(self.core, body["metadata"], "herald-job", type_, reason, message)

    def audience(self, spec: CampaignSpec) -> AudienceReader:
        """The audience's sources, read afresh."""
        maps, secrets = [], []
        for i, ref in enumerate(spec.audience.config_maps):
            data = self._data("ConfigMap", f"spec.audience.configMaps[{i}]", ref.name)
            maps.append(self._key(data, f"spec.audience.configMaps[{i}]", ref.name, ref.key))
        for i, ref in enumerate(spec.audience.secrets):
            data = self._data("Secret", f"spec.audience.secrets[{i}]", ref.name)
            value = self._key(data, f"spec.audience.secrets[{i}]", ref.name, ref.key)
            secrets.append(secret_text(value, f"spec.audience.secrets[{i}]"))
        return AudienceReader(spec.audience, maps, secrets)

    def credentials(self, spec: CampaignSpec) -> tuple[str | None, str | None]:
        ref = spec.smtp.credentials_secret_ref
        if ref is None:
            return None, None
        data = self._data("Secret", "spec.smtp.credentialsSecretRef", ref.name)
        field = "spec.smtp.credentialsSecretRef"
        return (secret_text(self._key(data, field, ref.name, "username"), field),
                secret_text(self._key(data, field, ref.name, "password"), field))

    def _data(self, kind: str, field: str, name: str) -> dict[str, str]:
        try:
            read = (self.core.read_namespaced_config_map if kind == "ConfigMap"
                    else self.core.read_namespaced_secret)
            data = read(name, self.namespace).data or {}
            return {str(k): str(v) for k, v in data.items()}
        except ApiException as err:
            raise AudienceError(f"{field}.name: cannot read {kind} {name!r}: "
                                f"{err.status} {err.reason}") from err

    @staticmethod
    def _key(data: dict[str, str], field: str, name: str, key: str) -> str:
        if key not in data:
            raise AudienceError(f"{field}: {name!r} has no key {key!r}")
        return data[key]
