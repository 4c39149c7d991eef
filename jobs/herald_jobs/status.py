"""The campaign's counts in its status, written by the pods of a run.

Counts come from the ledger's counts hash, whose `version` grows with every change. A
write carries that version and the resourceVersion it read (a conflict means someone wrote
in between: read again); a status that already shows a newer version is left alone. So
however many pods write, a reader never sees a count go backwards. The same write records
the ledger's identity and handover counter (status.ledger), which herald_jobs.loss checks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from typing import Any

from kubernetes.client.exceptions import ApiException

from herald_jobs.kube import CampaignSource
from herald_jobs.ledger import COUNT_FIELDS, Ledger

log = logging.getLogger("herald.job")
EVERY_SECONDS = 2.0


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    def __init__(self, source: CampaignSource, ledger: Ledger, dedupe_key: str) -> None:
        self.source = source
        self.ledger = ledger
        self.dedupe_key = dedupe_key
        self.started = dt.datetime.now(dt.UTC)
        self.job = os.environ.get("HERALD_JOB_NAME") or os.environ.get("HERALD_POD_NAME", "")
        self.audience_version: str | None = None

    async def write(self, sent_this_run: int, result: str = "") -> None:
        """Write the ledger's counts and its record (status.ledger), and, with a result,
        this run's lastRun. Counts of a ledger that is no longer the run's (another one, or
        an older copy) are not written."""
        counts, identity = await self.ledger.counts_and_identity()
        status: dict[str, Any] = {}
        if (identity.get("id") == self.ledger.ledger_id
                and int(identity.get("handovers", 0)) >= self.ledger.handovers_seen):
            status = {f: counts.get(f, 0) for f in COUNT_FIELDS}
            status["countsVersion"] = counts.get("version", 0)
            status["dedupeKey"] = self.dedupe_key
            status["ledger"] = {"id": identity["id"],
                                "handovers": int(identity.get("handovers", 0))}
            if self.audience_version:
                status["audienceVersion"] = self.audience_version
        if result:
            status["lastRun"] = {
                "job": self.job, "startTime": stamp(self.started),
                "completionTime": stamp(dt.datetime.now(dt.UTC)),
                "sent": sent_this_run, "result": result}
        if not status:
            return
        try:
            await asyncio.to_thread(self._patch, status, final=bool(result))
        except ApiException as err:  # status is for people; delivery goes on without it
            log.warning("status not written", extra={"status": err.status, "reason": err.reason})

    def _shows_newer(self, current: dict[str, Any], version: int, final: bool) -> bool:
        """Whether status shows counts as new as `version` or newer, or another ledger's."""
        if (current.get("ledger") or {}).get("id") not in (None, self.ledger.ledger_id):
            return True
        if current.get("dedupeKey") != self.dedupe_key:
            return False
        seen = current.get("countsVersion") or 0
        return seen > version or (seen == version and not final)

    def _advances(self, current: dict[str, Any], ledger: dict[str, Any]) -> bool:
        """Whether `ledger` is a newer record of the ledger status shows (or the first):
        the record only grows, whatever the counts do, so a loss check never misses."""
        shown = current.get("ledger") or {}
        return not shown or (shown.get("id") == ledger["id"]
                             and shown.get("handovers", 0) < ledger["handovers"])

    def _patch(self, status: dict[str, Any], final: bool) -> None:
        for _ in range(5):
            body = self.source.read()
            current = body.get("status") or {}
            mine = {k: v for k, v in status.items() if k not in ("ledger", "lastRun")}
            if mine and self._shows_newer(current, status["countsVersion"], final):
                mine = {}
            if "ledger" in status and self._advances(current, status["ledger"]):
                mine["ledger"] = status["ledger"]
            if "lastRun" in status:
                mine["lastRun"] = status["lastRun"]
            if not mine:
                return
            try:
                self.source.patch_status(mine, body["metadata"]["resourceVersion"])
                return
            except ApiException as err:
                if err.status != 409:
                    raise

    async def every(self, sent: Any) -> None:
        """Write every EVERY_SECONDS while the run lasts (cancel to end)."""
        while True:
            await asyncio.sleep(EVERY_SECONDS)
            await self.write(sent())
