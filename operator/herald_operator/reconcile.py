"""One pass over a campaign: check it, apply what it should own, delete what it should not,
and rebuild its status from the state of the world.

Every pass does the whole job, so it is safe to run it again at any time: after an edit,
after a restart, on a timer, or after somebody deleted a CronJob by hand.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kubernetes.dynamic.exceptions import ForbiddenError
from pydantic import ValidationError

from herald_api.models import CampaignSpec, audience_version, content_key
from herald_api.names import LEDGER_LOSS_ACK, acknowledge_loss_command
from herald_api.windows import is_open, next_window_start
from herald_operator import metrics
from herald_operator.builders import Campaign, JobSettings, cronjobs, job_access
from herald_operator.conditions import condition, is_true
from herald_operator.kube import Kube

log = logging.getLogger("herald.operator")


def field_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def spec_problem(raw: dict[str, Any]) -> tuple[CampaignSpec | None, str | None]:
    """The parsed spec, or the first thing wrong with it, naming the field."""
    try:
        spec = CampaignSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        return None, f"{field_path(first['loc'])}: {first['msg']}"
    try:
        ZoneInfo(spec.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return spec, f"spec.timeZone: unknown time zone {spec.time_zone!r}"
    return spec, None


def read_sources(kube: Kube, namespace: str, spec: CampaignSpec
                 ) -> tuple[str | None, list[str]]:
    """(what is missing, naming the field) or (None, the audience sources' text in order)."""
    refs: list[tuple[str, str, str, set[str]]] = []
    for i, ref in enumerate(spec.audience.config_maps):
        refs.append((f"spec.audience.configMaps[{i}]", "ConfigMap", ref.name, {ref.key}))
    for i, ref in enumerate(spec.audience.secrets):
        refs.append((f"spec.audience.secrets[{i}]", "Secret", ref.name, {ref.key}))
    if spec.smtp.credentials_secret_ref:
        refs.append(("spec.smtp.credentialsSecretRef", "Secret",
                     spec.smtp.credentials_secret_ref.name, {"username", "password"}))
    texts = []
    for path, kind, name, wanted in refs:
        data = kube.source_data(kind, namespace, name)
        if data is None:
            return f"{path}.name: {kind} {name!r} not found in namespace {namespace!r}", []
        missing = sorted(wanted - set(data))
        if missing:
            return f"{path}: {kind} {name!r} has no key {missing[0]!r}", []
        if path.startswith("spec.audience"):
            texts.append(data[next(iter(wanted))])
    return None, texts


def is_completed(spec: CampaignSpec, status: dict[str, Any], audience: str) -> bool:
    """Every recipient of the current round and audience is in a terminal state."""
    key = spec.delivery.dedupe_key or status.get("dedupeKey") or content_key(spec.message)
    return (status.get("dedupeKey") == key and status.get("audienceVersion") == audience
            and (status.get("total") or 0) > 0 and status.get("pending") == 0)


def ledger_loss_message(body: dict[str, Any]) -> str:
    """What a job found (status.ledgerLoss) and how to acknowledge it; "" once it is."""
    loss = (body.get("status") or {}).get("ledgerLoss") or {}
    if not loss:
        return ""
    meta = body["metadata"]
    if loss.get("id") and (meta.get("annotations") or {}).get(LEDGER_LOSS_ACK) == loss["id"]:
        return ""
    return (f"{loss.get('reason')}; nothing is sent until acknowledged: "
            f"{acknowledge_loss_command(meta['namespace'], meta['name'], loss.get('id', '?'))}")


@dataclass(frozen=True)
class Facts:
    """What a pass found out, from which status is derived."""

    halted: bool  # by the cluster halt
    halt_reason: str
    ledger_lost: str  # the unacknowledged loss's message (herald_jobs.loss)
    problem: str | None
    suspended: bool
    content_changed: str  # the dedupe key in force, when spec.message no longer matches it
    relay_unhealthy: bool  # the last run stopped after ambiguous deliveries in a row
    completed: bool
    running: bool
    window_open: bool
    cron_jobs: list[str]


def phase_of(f: Facts) -> str:
    if f.halted or f.ledger_lost:
        return "Halted"
    if f.problem:
        return "Invalid"
    if f.suspended or f.content_changed:
        return "Suspended"
    if f.completed:
        return "Completed"
    if f.running:
        return "Running"
    return "Scheduled" if f.cron_jobs else "Pending"


def conditions_of(f: Facts, old: list[dict[str, Any]], generation: int,
                  now: dt.datetime) -> list[dict[str, Any]]:
    def make(type_: str, status: bool, reason: str, message: str) -> dict[str, Any]:
        return condition(type_, status, reason, message, old, generation, now)

    if f.problem:
        ready = (False, "InvalidSpec", "see the Invalid condition")
    elif f.ledger_lost:
        ready = (False, "LedgerLost", "CronJobs suspended: the ledger was lost")
    elif f.halted:
        ready = (False, "ClusterHalt", "CronJobs suspended by the cluster halt")
    elif not f.cron_jobs:
        ready = (False, "NoCronJobs", "no CronJobs")
    else:
        ready = (True, "CronJobsReady", f"CronJobs: {', '.join(f.cron_jobs)}")
    return [
        make("Ready", *ready),
        make("Suspended", f.suspended, "SuspendedBySpec" if f.suspended else "NotSuspended",
             "spec.suspend is true" if f.suspended else ""),
        make("WindowOpen", f.window_open and not f.problem,
             "InsideWindow" if f.window_open else "OutsideWindow", ""),
        make("Invalid", bool(f.problem), "InvalidSpec" if f.problem else "Valid",
             f.problem or ""),
        # LedgerLost first: lifting the cluster halt does not lift it.
        make("Halted", f.halted or bool(f.ledger_lost),
             "LedgerLost" if f.ledger_lost else "ClusterHalt" if f.halted else "NotHalted",
             f.ledger_lost or (f.halt_reason if f.halted else "")),
        make("Degraded", f.relay_unhealthy,
             "RelayUnhealthy" if f.relay_unhealthy else "Healthy",
             "the last run stopped after several ambiguous deliveries in a row; the rest is "
             "pending for the next run" if f.relay_unhealthy else ""),
        make("ContentChanged", bool(f.content_changed),
             "MessageEdited" if f.content_changed else "AsFirstSent",
             f"spec.message changed since the first send; set spec.delivery.dedupeKey to "
             f"{f.content_changed} to go on without resending, or to a new value for a new "
             f"round to everybody" if f.content_changed else ""),
    ]


def events_of(old: dict[str, Any], new: dict[str, Any], generation: int
              ) -> list[tuple[str, str, str]]:
    """(type, reason, message) for what changed between two statuses."""
    events = []
    old_conditions = old.get("conditions") or []
    new_conditions = new["conditions"]
    if old.get("observedGeneration") is None:
        events.append(("Normal", "Created", f"CronJobs: {', '.join(new['cronJobs']) or 'none'}"))
    elif old.get("observedGeneration") != generation:
        events.append(("Normal", "Updated", f"generation {generation} applied; CronJobs: "
                       f"{', '.join(new['cronJobs']) or 'none'}"))
    if new["phase"] == "Completed" and old.get("phase") != "Completed":
        events.append(("Normal", "Completed", "every recipient has a final state; "
                                              "CronJobs suspended until the audience changes"))
    if is_true(new_conditions, "ContentChanged") and not is_true(old_conditions,
                                                                 "ContentChanged"):
        changed = next(c for c in new_conditions if c["type"] == "ContentChanged")
        events.append(("Warning", "ContentChanged", changed["message"]))
    for type_, on, off, lifted in (("Suspended", "Suspended", "Resumed", "no longer suspended"),
                                   ("Halted", "Halted", "HaltLifted", "no longer halted")):
        before, after = is_true(old_conditions, type_), is_true(new_conditions, type_)
        if before != after:
            why = next((c["message"] for c in new_conditions if c["type"] == type_), "")
            events.append(("Warning" if after and type_ == "Halted" else "Normal",
                           on if after else off,
                           (f"delivery stopped: {why}" if why else "delivery stopped")
                           if after else f"{lifted}; phase {new['phase']}"))
    invalid = next(c for c in new_conditions if c["type"] == "Invalid")
    old_invalid = [c for c in old_conditions if c.get("type") == "Invalid"]
    if invalid["status"] == "True" and (
            not old_invalid or old_invalid[0].get("message") != invalid["message"]):
        events.append(("Warning", "InvalidSpec", invalid["message"]))
    elif invalid["status"] == "False" and old_invalid and old_invalid[0].get("status") == "True":
        events.append(("Normal", "SpecValid", f"the spec is valid again; CronJobs: "
                                              f"{', '.join(new['cronJobs']) or 'none'}"))
    return events


_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def reconcile(kube: Kube, namespace: str, name: str, settings: JobSettings,
              now: dt.datetime | None = None) -> str | None:
    """Bring one campaign in line with its spec; return its phase (None: it is gone).

    Handlers and the resync loop run in different threads: one pass at a time per
    campaign, each on a fresh read, so two passes never both announce the same change.
    """
    with _locks_guard:
        lock = _locks.setdefault((namespace, name), threading.Lock())
    with lock:
        body = kube.campaign(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            return _reconcile(kube, body, settings, now or dt.datetime.now(dt.UTC))
        except ForbiddenError as err:
            if "NamespaceTerminating" in str(err):
                return None  # its namespace is going away, and the campaign with it
            raise


def _reconcile(kube: Kube, body: dict[str, Any], settings: JobSettings,
               now: dt.datetime) -> str:
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta["generation"]
    old_status = body.get("status") or {}
    halt = kube.halt() or {}
    halted = bool(halt.get("halted"))
    ledger_lost = ledger_loss_message(body)

    spec, problem = spec_problem(body.get("spec") or {})
    if spec and not problem and not spec.smtp.host and not settings.default_relay[0]:
        problem = ("spec.smtp.host: not set, and this install has no default SMTP relay "
                   "(the chart's smtp.host; HERALD_DEFAULT_SMTP_HOST)")
    completed = False
    in_force = old_status.get("dedupeKey") or ""
    content_changed = bool(spec and not spec.delivery.dedupe_key and in_force
                           and content_key(spec.message) != in_force)
    if spec and not problem:
        problem, texts = read_sources(kube, namespace, spec)
        # Completed until the audience changes: then the CronJobs run again and the new
        # recipients (only they) get the message.
        completed = not problem and is_completed(
            spec, old_status, audience_version(spec.audience, texts))
    desired: list[dict[str, Any]] = []
    if spec and not problem:
        campaign = Campaign(namespace, name, meta["uid"], spec)
        for obj in job_access(campaign, settings):
            kube.apply(obj)
        desired = cronjobs(campaign, settings,
                           suspend=spec.suspend or halted or bool(ledger_lost) or completed
                           or content_changed)
        for obj in desired:
            kube.apply(obj)
    wanted = {obj["metadata"]["name"] for obj in desired}
    for existing in kube.owned("batch/v1", "CronJob", namespace, namespace, name):
        cj_name = existing["metadata"]["name"]
        if cj_name not in wanted:
            kube.delete("batch/v1", "CronJob", cj_name, namespace)
    # Jobs carry the CronJobs' labels, also those a person made with `create job --from`.
    running = any((job.get("status") or {}).get("active")
                  for job in kube.owned("batch/v1", "Job", namespace, namespace, name))

    zone = ZoneInfo(spec.time_zone) if spec and not problem else None
    facts = Facts(
        halted=halted,
        halt_reason=str(halt.get("reason") or "DeliveryHalt 'cluster' is halted"),
        ledger_lost=ledger_lost,
        problem=problem,
        suspended=bool(spec and spec.suspend),
        content_changed=in_force if content_changed else "",
        relay_unhealthy=(old_status.get("lastRun") or {}).get("result") == "RelayUnhealthy",
        completed=completed,
        running=running,
        window_open=bool(spec and zone and is_open(spec.windows, zone, now)),
        cron_jobs=sorted(wanted),
    )
    next_start = next_window_start(spec.windows, zone, now) if spec and zone else None
    status = {
        "phase": phase_of(facts),
        "observedGeneration": generation,
        "cronJobs": facts.cron_jobs,
        "nextWindowStart": next_start.isoformat() if next_start else None,
        "conditions": conditions_of(facts, old_status.get("conditions") or [], generation, now),
    }
    changed = {k: v for k, v in status.items() if old_status.get(k) != v}
    if changed:
        kube.patch_campaign_status(namespace, name, changed)
    for type_, reason, message in events_of(old_status, status, generation):
        kube.event(body, type_, reason, message)
    metrics.RECONCILES.inc()
    return str(status["phase"])


def reconcile_all(kube: Kube, settings: JobSettings, *, keep_halt_object: bool = True) -> None:
    """The halt object (unless told to leave it deleted), then every campaign."""
    if keep_halt_object and kube.halt() is None:
        kube.ensure_halt_object()  # the halt command needs it (deleting it needs no halt)
    phases: dict[str, int] = {}
    for body in kube.campaigns():
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            phase = reconcile(kube, namespace, name, settings)
        except Exception:
            metrics.ERRORS.inc()
            log.exception("reconcile failed", extra={"campaign": f"{namespace}/{name}"})
            continue
        if phase:
            phases[phase] = phases.get(phase, 0) + 1
    metrics.set_phases(phases)
