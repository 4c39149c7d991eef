"""kopf handler registration; the work is in herald_operator.reconcile.

No handler here needs a finalizer (no deletion handler, timer or daemon): deletion is
left to owner references, so a campaign or its namespace never waits on the operator.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from herald_api import GROUP, VERSION
from herald_operator.reconcile import reconcile, reconcile_all

PREFIX = "kopf.herald.dev"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's own bookkeeping goes to annotations, not to status fields the schema prunes.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30


@kopf.on.resume(GROUP, VERSION, "notificationcampaigns")
@kopf.on.create(GROUP, VERSION, "notificationcampaigns")
@kopf.on.update(GROUP, VERSION, "notificationcampaigns", field="spec")
def campaign_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    reconcile(memo.kube, str(namespace), name, memo.settings)


@kopf.on.event(GROUP, VERSION, "deliveryhalts")
def halt_changed(memo: kopf.Memo, **_: Any) -> None:
    reconcile_all(memo.kube, memo.settings)


@kopf.on.event(GROUP, VERSION, "notificationcampaigns",
               when=lambda status, **_: bool(status.get("ledgerLoss")))
def ledger_loss_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    # A job recorded a loss, or a person acknowledged one: show it (and halt) at once.
    reconcile(memo.kube, str(namespace), name, memo.settings)
