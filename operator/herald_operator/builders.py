"""Pure builders: a campaign in, the Kubernetes objects it should own out (as dicts).

Nothing here calls the API, so every object can be checked in unit tests, and applying
the same campaign twice yields the same objects.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

from herald_api import API_VERSION, GROUP
from herald_api.models import DEFAULT_RELAY_ENV, CampaignSpec
from herald_api.names import (
    CAMPAIGN_ANNOTATION,
    cronjob_name,
    job_account_name,
    labels,
)
from herald_api.windows import max_length, minutes_of, schedules

REDIS_URL_KEY = "redis-url"  # in the Secret named like the campaign's ServiceAccount
NO_WINDOW_RUN_SECONDS = 24 * 3600  # the backstop of a run of a campaign without windows


@dataclass(frozen=True)
class Campaign:
    namespace: str
    name: str
    uid: str
    spec: CampaignSpec


@dataclass(frozen=True)
class JobSettings:
    """What every delivery pod gets from the operator's configuration."""

    image: str = "herald:latest"
    image_pull_policy: str = "IfNotPresent"
    # Secrets, in each campaign's namespace, for pulling the image from a private registry.
    image_pull_secrets: tuple[str, ...] = ()
    user_id: int = 10001  # the pods' user and group: the image's USER, or the install's
    # The ledger's Redis. It reaches the pods through a Secret of each campaign's own
    # (job_access), never as a literal in the CronJob, since it may hold a password.
    redis_url: str = ""
    accept_unverified_redis: bool = False  # a managed Redis whose CONFIG cannot be read
    # The install's default SMTP relay (host, port, security) for campaigns without a host.
    default_relay: tuple[str, str, str] = ("", "", "")

    @classmethod
    def from_env(cls) -> JobSettings:
        return cls(
            accept_unverified_redis=os.environ.get(
                "HERALD_JOB_ACCEPT_UNVERIFIED_REDIS", "") in ("1", "true"),
            default_relay=tuple(  # type: ignore[arg-type]
                os.environ.get(name, "") for name in DEFAULT_RELAY_ENV),
            image=os.environ.get("HERALD_JOB_IMAGE", cls.image),
            image_pull_policy=os.environ.get("HERALD_JOB_IMAGE_PULL_POLICY",
                                             cls.image_pull_policy),
            image_pull_secrets=tuple(name.strip() for name in os.environ.get(
                "HERALD_JOB_IMAGE_PULL_SECRETS", "").split(",") if name.strip()),
            user_id=int(os.environ.get("HERALD_JOB_USER_ID") or cls.user_id),
            redis_url=os.environ.get("HERALD_JOB_REDIS_URL",
                                     os.environ.get("HERALD_REDIS_URL", "")),
        )


def owner_reference(campaign: Campaign) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NotificationCampaign",
        "name": campaign.name,
        "uid": campaign.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(campaign: Campaign, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": campaign.namespace,
        "labels": labels(campaign.namespace, campaign.name),
        "ownerReferences": [owner_reference(campaign)],
    }


def _pod_env(campaign: Campaign, settings: JobSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HERALD_NAMESPACE",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HERALD_CAMPAIGN", "value": campaign.name},
        {"name": "HERALD_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HERALD_JOB_NAME",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
    ]
    if settings.redis_url:
        env.append({"name": "HERALD_REDIS_URL", "valueFrom": {"secretKeyRef": {
            "name": job_account_name(campaign.name), "key": REDIS_URL_KEY}}})
    if settings.accept_unverified_redis:
        env.append({"name": "HERALD_ACCEPT_UNVERIFIED_REDIS", "value": "1"})
    if not campaign.spec.smtp.host:
        env += [{"name": name, "value": value}
                for name, value in zip(DEFAULT_RELAY_ENV, settings.default_relay, strict=True)
                if value]
    return env


def _job_template(
    campaign: Campaign, settings: JobSettings, deadline_seconds: int
) -> dict[str, Any]:
    spec = campaign.spec
    return {
        # The full name, where labels truncate: the operator finds the campaign of a Job.
        "metadata": {"labels": labels(campaign.namespace, campaign.name),
                     "annotations": {CAMPAIGN_ANNOTATION: f"{campaign.namespace}/{campaign.name}"}},
        "spec": {
            # Pods cooperate on one queue: the Job is done when one pod succeeds and the
            # others have stopped (no completions count).
            "parallelism": spec.delivery.parallelism,
            "backoffLimit": 3,
            "activeDeadlineSeconds": deadline_seconds,
            "template": {
                "metadata": {"labels": labels(campaign.namespace, campaign.name)},
                "spec": {
                    "serviceAccountName": job_account_name(campaign.name),
                    "restartPolicy": "Never",
                    # In-flight messages finish within the SMTP timeout before the pod exits.
                    "terminationGracePeriodSeconds": spec.smtp.timeout_seconds + 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": settings.user_id,
                        "runAsGroup": settings.user_id,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "imagePullSecrets": [{"name": name} for name in settings.image_pull_secrets],
                    # A writable /tmp on a read-only root, as the operator has.
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                    "containers": [{
                        "name": "deliver",
                        "image": settings.image,
                        "imagePullPolicy": settings.image_pull_policy,
                        "command": ["herald", "job"],
                        "env": _pod_env(campaign, settings),
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"memory": "256Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    }


def cronjobs(campaign: Campaign, settings: JobSettings, *, suspend: bool) -> list[dict[str, Any]]:
    """One CronJob per cron line of each window (a campaign without windows gets one)."""
    spec = campaign.spec
    every = minutes_of(spec.resume_every)
    timeout = spec.smtp.timeout_seconds
    plans: list[tuple[str, str, int]] = []  # (name, schedule, deadline)
    if not spec.windows:
        schedule = "0 * * * *" if every == 60 else f"*/{every} * * * *"
        plans.append((cronjob_name(campaign.name, 0, 0, 1), schedule, NO_WINDOW_RUN_SECONDS))
    for index, window in enumerate(spec.windows):
        lines = schedules(window, every)
        # A run stops at the window's end; the deadline is only a backstop past it.
        deadline = int(max_length(window).total_seconds()) + 2 * timeout + 60
        for part, line in enumerate(lines):
            plans.append((cronjob_name(campaign.name, index, part, len(lines)), line, deadline))
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": _metadata(campaign, name),
            "spec": {
                "schedule": schedule,
                "timeZone": spec.time_zone,
                "suspend": suspend,
                "concurrencyPolicy": "Forbid",
                # Missed starts older than one interval are dropped, so downtime never piles
                # up into "too many missed start times".
                "startingDeadlineSeconds": every * 60,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": _job_template(campaign, settings, deadline),
            },
        }
        for name, schedule, deadline in plans
    ]


def job_access(campaign: Campaign, settings: JobSettings | None = None
               ) -> list[dict[str, Any]]:
    """The delivery pods' ServiceAccount and exactly the access the contract lists (but
    reading the halt, which the install grants every ServiceAccount), and the Secret that
    holds the ledger's Redis URL for them (when the operator has one). The pods need no
    API access to that Secret: their node resolves the secretKeyRef."""
    name = job_account_name(campaign.name)
    spec = campaign.spec
    config_maps = sorted({ref.name for ref in spec.audience.config_maps})
    secrets = {ref.name for ref in spec.audience.secrets}
    if spec.smtp.credentials_secret_ref:
        secrets.add(spec.smtp.credentials_secret_ref.name)
    redis_secret = []
    if settings and settings.redis_url:
        redis_secret.append({
            "apiVersion": "v1", "kind": "Secret", "metadata": _metadata(campaign, name),
            "type": "Opaque",
            "data": {REDIS_URL_KEY: base64.b64encode(settings.redis_url.encode()).decode()}})
    rules: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": ["notificationcampaigns"],
         "resourceNames": [campaign.name], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [GROUP], "resources": ["notificationcampaigns/status"],
         "resourceNames": [campaign.name], "verbs": ["get", "patch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    ]
    # An empty resourceNames would mean every object: add these rules only when named.
    if config_maps:
        rules.append({"apiGroups": [""], "resources": ["configmaps"],
                      "resourceNames": config_maps, "verbs": ["get"]})
    if secrets:
        rules.append({"apiGroups": [""], "resources": ["secrets"],
                      "resourceNames": sorted(secrets), "verbs": ["get"]})
    subject = {"kind": "ServiceAccount", "name": name, "namespace": campaign.namespace}
    return [
        *redis_secret,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(campaign, name)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _metadata(campaign, name), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _metadata(campaign, name),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [subject]},
    ]
