"""Pure builders: names, CronJobs and the delivery pods' access, from a campaign."""

from __future__ import annotations

import base64
import json
from typing import Any

from herald_api.models import CampaignSpec, with_default_relay
from herald_api.names import CRONJOB_NAME_MAX, cronjob_name, job_account_name
from herald_operator.builders import Campaign, JobSettings, cronjobs, job_access


def make(name: str = "notice", **spec: Any) -> Campaign:
    raw: dict[str, Any] = {
        "audience": {"inline": [{"email": "user1@example.com"}]},
        "message": {"from": "no-reply@example.com", "subject": "Notice", "text": "Hello"},
        "smtp": {"host": "smtp.example.com"},
        **spec,
    }
    return Campaign("notices", name, "uid-1", CampaignSpec.model_validate(raw))


def test_long_names_are_cut_with_a_hash_and_stay_distinct() -> None:
    base = "a-very-long-campaign-name-that-goes-on-and-on-about-privacy"
    one = cronjob_name(base + "-2026", 0, 0, 1)
    two = cronjob_name(base + "-2027", 0, 0, 1)
    assert len(one) <= CRONJOB_NAME_MAX and len(two) <= CRONJOB_NAME_MAX
    assert one != two
    assert one.endswith("-w0")
    assert cronjob_name("notice", 1, 2, 3) == "notice-w1-2"
    assert len(job_account_name(base * 2)) <= 63


def test_the_same_campaign_always_builds_the_same_objects() -> None:
    campaign = make(windows=[{"days": ["Mon"], "start": "09:00", "end": "10:00"}])
    assert cronjobs(campaign, JobSettings(), suspend=False) == cronjobs(
        campaign, JobSettings(), suspend=False)
    assert job_access(campaign) == job_access(campaign)


def test_without_windows_one_cronjob_runs_every_resume_interval() -> None:
    [cj] = cronjobs(make(resumeEvery="5m"), JobSettings(), suspend=True)
    assert cj["spec"]["schedule"] == "*/5 * * * *"
    assert cj["spec"]["suspend"] is True
    [hourly] = cronjobs(make(resumeEvery="60m"), JobSettings(), suspend=False)
    assert hourly["spec"]["schedule"] == "0 * * * *"


def test_pods_find_redis_in_a_secret_of_their_campaign_resolved_by_their_node() -> None:
    campaign, settings = make(), JobSettings(redis_url="redis://:pw@redis:6379/0")
    [cj] = cronjobs(campaign, settings, suspend=False)
    container = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    [redis] = [e for e in container["env"] if e["name"] == "HERALD_REDIS_URL"]
    assert redis["valueFrom"] == {"secretKeyRef": {"name": "herald-job-notice",
                                                   "key": "redis-url"}}
    assert "pw" not in json.dumps(cj)
    objects = job_access(campaign, settings)
    [secret] = [o for o in objects if o["kind"] == "Secret"]
    assert base64.b64decode(secret["data"]["redis-url"]).decode() == settings.redis_url
    [role] = [o for o in objects if o["kind"] == "Role"]
    assert not [r for r in role["rules"] if "secrets" in r["resources"]], (
        "the pods themselves need no access to it")


def test_pods_pull_and_run_as_the_install_says_and_have_a_writable_tmp() -> None:
    settings = JobSettings(image_pull_secrets=("registry-pull",), user_id=20002)
    [cj] = cronjobs(make(), settings, suspend=False)
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        20002, 20002)
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["containers"][0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def rules_of(campaign: Campaign) -> list[dict[str, Any]]:
    [role] = [o for o in job_access(campaign) if o["kind"] == "Role"]
    return list(role["rules"])


def test_pods_get_no_configmap_or_secret_rule_when_none_is_named() -> None:
    resources = [r["resources"] for r in rules_of(make())]
    assert ["configmaps"] not in resources and ["secrets"] not in resources
    # An empty resourceNames would grant every object: never emitted.
    assert all(r.get("resourceNames", ["x"]) for r in rules_of(make()))


def test_pods_may_read_exactly_the_sources_and_credentials_named() -> None:
    campaign = make(
        audience={"configMaps": [{"name": "recipients", "key": "a.csv"}],
                  "secrets": [{"name": "vip", "key": "b.jsonl"}]},
        smtp={"host": "h", "credentialsSecretRef": {"name": "smtp-credentials"}})
    by_resource = {r["resources"][0]: r for r in rules_of(campaign)}
    assert by_resource["configmaps"]["resourceNames"] == ["recipients"]
    assert by_resource["secrets"]["resourceNames"] == ["smtp-credentials", "vip"]
    assert by_resource["notificationcampaigns"]["resourceNames"] == ["notice"]
    assert by_resource["notificationcampaigns"]["verbs"] == ["get", "list", "watch"]


def test_a_campaign_without_a_host_gets_the_installs_default_relay() -> None:
    settings = JobSettings(default_relay=("relay.example.com", "465", "TLS"))
    campaign = make(smtp={"timeoutSeconds": 10})
    [cj] = cronjobs(campaign, settings, suspend=False)
    container = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["HERALD_DEFAULT_SMTP_HOST"], env["HERALD_DEFAULT_SMTP_PORT"],
            env["HERALD_DEFAULT_SMTP_SECURITY"]) == ("relay.example.com", "465", "TLS")
    relay = with_default_relay(campaign.spec.smtp, env)  # as the pod sees it
    assert relay is not None
    assert (relay.host, relay.port, relay.security, relay.timeout_seconds) == (
        "relay.example.com", 465, "TLS", 10)
    [own] = cronjobs(make(), settings, suspend=False)  # a campaign with its own host
    own_env = own["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not [e for e in own_env if e["name"].startswith("HERALD_DEFAULT_SMTP")]
    assert with_default_relay(campaign.spec.smtp, {}) is None
