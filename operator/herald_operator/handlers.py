"""kopf handler registration; the work is in herald_operator.reconcile.

No handler here needs a finalizer (no deletion handler, timer or daemon): deletion is
left to owner references, so a campaign or its namespace never waits on the operator.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from herald_api import GROUP, VERSION
from herald_api.names import CAMPAIGN_ANNOTATION, MANAGED_BY
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
def halt_changed(type: str, memo: kopf.Memo, **_: Any) -> None:
    # A deleted halt object comes back at the next resync, not from here: `helm uninstall`
    # deletes it a moment before the operator, which must not leave a new one behind.
    reconcile_all(memo.kube, memo.settings, keep_halt_object=type != "DELETED")


def _needs_a_look(status: kopf.Status, **_: Any) -> bool:
    """A delivery pod wrote what changes the phase: a ledger loss (or its acknowledgement),
    or the last pending recipient done."""
    return bool(status.get("ledgerLoss")) or (
        status.get("pending") == 0 and status.get("phase") != "Completed")


@kopf.on.event(GROUP, VERSION, "notificationcampaigns", when=_needs_a_look)
def status_written(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    # At once, not at the next resync. A pass writes only what changed, so this settles.
    reconcile(memo.kube, str(namespace), name, memo.settings)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY},
               annotations={CAMPAIGN_ANNOTATION: kopf.PRESENT})
def job_changed(namespace: str | None, annotations: kopf.Annotations, memo: kopf.Memo,
                **_: Any) -> None:
    # A run started or ended (also one made with `kubectl create job --from`): the phase
    # moves to Running and back now, not at the next resync.
    name = annotations[CAMPAIGN_ANNOTATION].partition("/")[2]
    if name:  # a hand-edited annotation names no campaign
        reconcile(memo.kube, str(namespace), name, memo.settings)
