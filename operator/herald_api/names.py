"""Names and labels of the objects Herald makes: pure functions of the campaign."""

from __future__ import annotations

import hashlib

CRONJOB_NAME_MAX = 52  # a CronJob's Jobs add 11 characters to stay within 63
LABEL_VALUE_MAX = 63

MANAGED_BY = "herald-operator"
LABEL_CAMPAIGN = "herald.dev/campaign"
LABEL_NAMESPACE = "herald.dev/campaign-namespace"
CAMPAIGN_ANNOTATION = "herald.dev/campaign"  # namespace/name in full, where labels truncate
# Set by a person to the id of a ledger loss (status.ledgerLoss.id): delivery may go on.
LEDGER_LOSS_ACK = "herald.dev/ledger-loss-acknowledged"


def short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def fit(name: str, limit: int, *, key: str | None = None) -> str:
    """`name` if it fits in `limit`, else its head and a hash of the whole (or of `key`)."""
    if len(name) <= limit:
        return name
    suffix = short_hash(key or name)
    return f"{name[: limit - len(suffix) - 1].rstrip('-.')}-{suffix}"


def cronjob_name(campaign: str, window: int, part: int, parts: int) -> str:
    """`<campaign>-w<window>`, or `…-w<window>-<part>` when a window needs several lines."""
    tail = f"-w{window}" if parts == 1 else f"-w{window}-{part}"
    return fit(campaign, CRONJOB_NAME_MAX - len(tail), key=campaign) + tail


def job_account_name(campaign: str) -> str:
    """The ServiceAccount, Role and RoleBinding of a campaign's delivery pods."""
    return fit(f"herald-job-{campaign}", LABEL_VALUE_MAX)


def labels(namespace: str, campaign: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "herald",
        "app.kubernetes.io/component": "delivery",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/instance": fit(campaign, LABEL_VALUE_MAX),
        LABEL_CAMPAIGN: fit(campaign, LABEL_VALUE_MAX),
        LABEL_NAMESPACE: namespace,
    }


def acknowledge_loss_command(namespace: str, campaign: str, loss_id: str) -> str:
    """What a person runs to let delivery go on after a ledger loss."""
    return f"kubectl annotate nc {campaign} -n {namespace} --overwrite {LEDGER_LOSS_ACK}={loss_id}"
