"""Fixtures for running `herald job` as a user would: a campaign, its pods' access, runs."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client

from herald_api.models import CampaignSpec, content_key
from herald_dev.controlplane import ControlPlane
from herald_jobs.keys import CampaignKeys
from herald_operator.builders import Campaign, job_access
from tests.conftest import LOGS_BY_FIXTURE, Mailbox


class Delivery:
    def __init__(self, cp: ControlPlane, api: client.ApiClient, namespace: str,
                 redis_url: str, tmp: Path) -> None:
        self.cp, self.api, self.ns, self.redis_url, self.tmp = cp, api, namespace, redis_url, tmp
        self.logs: list[Path] = []

    def campaign(self, name: str, box: Mailbox, **spec: Any) -> CampaignSpec:
        body: dict[str, Any] = {
            "audience": {"inline": [{"email": "user1@example.com"}]},
            "message": {"from": "Notices <no-reply@example.com>", "subject": "Notice",
                        "text": "Hello {{ name | default('there') }}"},
            "smtp": {"host": "127.0.0.1", "port": box.port, "security": "None",
                     "timeoutSeconds": 2, "connections": 2},
            # As fast as the test servers take it, unless a test is about the rate.
            "delivery": {"leaseSeconds": 4, "backoffSeconds": 1, "ratePerSecond": 10000},
        }
        body.update(spec)
        self.cp.kubectl("apply", "-n", self.ns, "-f", "-", input_=json.dumps({
            "apiVersion": "herald.dev/v1alpha1", "kind": "NotificationCampaign",
            "metadata": {"name": name}, "spec": body}))
        obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "herald.dev", "v1alpha1", self.ns, "notificationcampaigns", name)
        parsed = CampaignSpec.model_validate(obj["spec"])
        for access in job_access(Campaign(self.ns, name, obj["metadata"]["uid"], parsed)):
            self.cp.kubectl("apply", "-f", "-", input_=json.dumps(access))
        return parsed

    def secret(self, name: str, data: dict[str, str]) -> None:
        client.CoreV1Api(self.api).create_namespaced_secret(self.ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data=data))

    def configmap(self, name: str, data: dict[str, str]) -> None:
        client.CoreV1Api(self.api).create_namespaced_config_map(self.ns, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name), data=data))

    def start(self, name: str, redis_url: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        # A fresh token each time: a deleted and re-applied campaign has a new ServiceAccount.
        kubeconfig = self.cp.service_account_kubeconfig(
            self.ns, f"herald-job-{name}", self.tmp / f"job-{name}.kubeconfig")
        log = self.tmp / f"job-{name}-{len(self.logs)}.log"
        self.logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", "herald_dev.cli", "job", "--namespace", self.ns,
             "--campaign", name, "--redis-url", redis_url or self.redis_url],
            env={**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})}, text=True,
            stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def run(self, name: str, redis_url: str | None = None,
            env: dict[str, str] | None = None) -> tuple[int, str]:
        proc = self.start(name, redis_url, env)
        code = proc.wait(timeout=120)
        return code, self.logs[-1].read_text()

    def ledger(self, name: str, spec: CampaignSpec) -> dict[str, dict[str, Any]]:
        keys = CampaignKeys(self.ns, name, content_key(spec.message))
        raw = redis.Redis.from_url(self.redis_url).hgetall(keys.ledger)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def counts(self, name: str, spec: CampaignSpec) -> dict[str, int]:
        keys = CampaignKeys(self.ns, name, content_key(spec.message))
        raw = redis.Redis.from_url(self.redis_url).hgetall(keys.counts)
        return {k.decode(): int(v) for k, v in raw.items()}


@pytest.fixture
def delivery(herald_installed: Path, control_plane: ControlPlane, api: client.ApiClient,
             namespace: str,
             redis_url: str, tmp_path: Path) -> Delivery:
    d = Delivery(control_plane, api, namespace, redis_url, tmp_path)
    LOGS_BY_FIXTURE["delivery"] = d.logs  # shown when a test fails
    return d


def per_recipient(box: Mailbox, outcome: str = "accepted") -> collections.Counter[str]:
    return collections.Counter(r for e in box.journal() if e["outcome"] == outcome
                               for r in e["rcpt_tos"])


def csv_audience(count: int) -> str:
    return "email,name\n" + "".join(f"user{i}@example.com,User {i}\n" for i in range(count))
