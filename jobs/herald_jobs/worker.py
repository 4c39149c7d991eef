"""One delivery run: read the campaign, seed its work once, send under leases, exit.

The send path for one recipient reads as the ledger docstring tells it:
claim → render → MAIL/RCPT → fenced mark → DATA → classify → record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from herald_api.models import CampaignSpec, content_key, with_default_relay
from herald_api.names import acknowledge_loss_command
from herald_jobs.audience import AudienceReader
from herald_jobs.controls import Controls
from herald_jobs.keys import CampaignKeys
from herald_jobs.kube import CampaignSource
from herald_jobs.ledger import Claimed, Lane, Ledger, Policy, Record
from herald_jobs.loss import LedgerCheck, check_ledger
from herald_jobs.mailer import Outcome, Session
from herald_jobs.render import MessageFactory, RenderError
from herald_jobs.status import StatusWriter, stamp

log = logging.getLogger("herald.job")

CLAIM_BATCH = 20  # recipients a session claims at a time
SEED_BATCH = 500  # recipients per seeding script call
UNKNOWN_IN_A_ROW = 3  # ambiguous outcomes in a row that make the relay unhealthy
RELAY_FAILURES_IN_A_ROW = 5  # failed connections in a row that end a session
SEED_LOCK_MS = 120_000
RENDER_SECONDS = 5.0

# What the contract requires of the ledger's Redis, and the setting that names each.
DURABILITY = {
    "appendonly": ("yes",),
    "appendfsync": ("always",),
}
EVICTING = ("allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
            "volatile-random", "volatile-ttl")


class SpecProblem(ValueError):
    """The campaign cannot be run as it is; the message names the field."""


class NotDurable(RuntimeError):
    """Redis could lose acknowledged ledger writes; the message names the setting."""


async def check_durable(client: aioredis.Redis, accept_unverified: bool) -> None:
    try:
        found = await client.config_get("*")
    except aioredis.ResponseError as err:
        if accept_unverified:
            log.warning("redis configuration unreadable; durability accepted unverified")
            return
        raise NotDurable(
            f"cannot read Redis's configuration ({err}); if it is a managed Redis known to "
            "keep acknowledged writes, run with --accept-unverified-redis "
            "(HERALD_ACCEPT_UNVERIFIED_REDIS=1)") from err
    settings = {str(k): str(v) for k, v in found.items()}
    for name, allowed in DURABILITY.items():
        if settings.get(name) not in allowed:
            raise NotDurable(f"Redis setting {name} is {settings.get(name)!r}; the ledger "
                             f"needs {name} {allowed[0]} so acknowledged writes survive a crash")
    if settings.get("maxmemory-policy") in EVICTING:
        raise NotDurable(f"Redis setting maxmemory-policy is {settings['maxmemory-policy']!r}, "
                         "which evicts keys; the ledger needs noeviction")


def chunks(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


async def seed(client: aioredis.Redis, ledger: Ledger, audience: AudienceReader) -> bool:
    """Add the audience to the ledger once per audience version, however many runs start.

    Returns False when it was seeded already (by this run's predecessors or a peer).
    """
    keys = ledger.keys
    version = audience.version()
    token = secrets.token_hex(8)
    async def current(key: str) -> str:
        value = await client.get(key)
        return value.decode() if isinstance(value, bytes) else str(value or "")

    while True:
        if await current(keys.seeded) == version:
            return False
        if await client.set(keys.seed_lock, token, nx=True, px=SEED_LOCK_MS):
            break
        await asyncio.sleep(0.2)  # another pod is seeding this version: wait for its mark
    try:
        if await current(keys.seeded) == version:
            return False
        # The whole audience must be readable before any of it is written: a source that
        # fails on its last line must not leave its first lines queued.
        for _ in audience:
            pass
        added = 0
        await client.delete(keys.seen(version))  # left by a seeding that died midway
        rows = ((r.identity, {"address": r.address, "vars": r.vars} if not r.invalid else None,
                 r.invalid) for r in audience)
        for batch in chunks(iter(rows), SEED_BATCH):
            added += await ledger.seed(version, batch)
            await client.pexpire(keys.seed_lock, SEED_LOCK_MS)
        withdrawn = await ledger.withdraw_absent(version)
        await client.set(keys.seeded, version)
        await client.delete(keys.seen(version))
        log.info("audience seeded", extra={"audience_version": version, "new_pending": added,
                                           "withdrawn": withdrawn})
        return True
    finally:
        if await current(keys.seed_lock) == token:
            await client.delete(keys.seed_lock)


@dataclass
class RunState:
    stop_reason: str = ""
    unknown_in_a_row: int = 0
    relay_gave_up: int = 0  # sessions that ended because the relay kept failing
    held: dict[str, list[str]] = field(default_factory=dict)  # token → identities
    outcomes: dict[str, int] = field(default_factory=dict)


# Stops that hold for every pod of the campaign, announced in Redis for the marks of all.
SHARED_STOPS = ("Suspended", "Halted", "Deleted", "LedgerLost")


class Run:
    def __init__(self, spec: CampaignSpec, ledger: Ledger, factory: MessageFactory,
                 credentials: tuple[str | None, str | None], controls: Controls,
                 on_unknown: Callable[[str, str], None] = lambda who, why: None) -> None:
        self.on_unknown = on_unknown  # announces an ambiguous delivery (an Event)
        self.spec = spec
        self.ledger = ledger
        self.factory = factory
        self.credentials = credentials
        self.controls = controls
        self.state = RunState()

    async def stopping(self) -> bool:
        """Whether the run must stop; the first sight of a shared stop is announced."""
        if not self.state.stop_reason:
            reason = self.controls.reason()
            if reason:
                self.state.stop_reason = reason
                log.info("run stopping", extra={"reason": reason})
                if reason in SHARED_STOPS:
                    await self.ledger.announce_stop(reason)
        return bool(self.state.stop_reason)

    async def deliver(self) -> RunState:
        sessions = [Session(self.spec.smtp, *self.credentials)
                    for _ in range(self.spec.smtp.connections)]
        renew = asyncio.create_task(self._renew_leases())
        try:
            await asyncio.gather(*(self._session_loop(s) for s in sessions))
            if not self.state.stop_reason and self.state.relay_gave_up == len(sessions):
                self.state.stop_reason = "RelayUnavailable"
        finally:
            renew.cancel()
            for s in sessions:
                await s.close()
        return self.state

    async def _renew_leases(self) -> None:
        every = self.ledger.policy.lease_ms / 3000
        while True:
            await asyncio.sleep(every)
            for token, identities in list(self.state.held.items()):
                await self.ledger.renew(token, identities)

    async def _session_loop(self, session: Session) -> None:
        try:
            await self._claim_and_send(session)
        except RedisError as err:
            # Whatever this session held stays leased; when the leases expire another run
            # takes them over by the ledger's rules. Nothing is sent without a mark.
            log.error("ledger unavailable; session ends", extra={"error": str(err)})
            self.state.stop_reason = "LedgerUnavailable"

    async def _rate_token(self, tokens: list[int]) -> bool:
        """Wait for a token of the campaign's rate (a few are taken at a time); False when
        the run stops while waiting."""
        rate = self.spec.delivery.rate_per_second
        while not tokens[0]:
            if await self.stopping():
                return False
            granted, wait_ms = await self.ledger.take_tokens(rate, max(1, min(5, rate // 20)))
            tokens[0] = granted
            if not granted:
                await asyncio.sleep(wait_ms / 1000)
        tokens[0] -= 1
        return True

    async def _claim_and_send(self, session: Session) -> None:
        lane = self.ledger.lane()  # this session marks one message at a time
        relay_failures = 0
        tokens = [0]  # this session's unused rate tokens
        while not await self.stopping():
            batch = await self.ledger.claim(CLAIM_BATCH)
            if not batch:
                if not await self.ledger.unfinished():
                    return
                await asyncio.sleep(0.5)  # retries not yet due, or other pods' leases
                continue
            token = batch[0].token
            self.state.held[token] = [item.identity for item in batch]
            carry: Record | None = None  # recorded together with the next mark
            try:
                for i, item in enumerate(batch):
                    if (relay_failures >= RELAY_FAILURES_IN_A_ROW
                            or not await self._rate_token(tokens) or await self.stopping()):
                        for rest in batch[i:]:
                            await self.ledger.record(Record(rest, "release", "run stopped",
                                                            delay_ms=0))
                        break
                    outcome, carry = await self._send_one(session, lane, item, carry)
                    relay_failures = relay_failures + 1 if outcome is Outcome.RELAY else 0
                    if outcome is Outcome.RELAY:
                        if carry is not None:
                            await self.ledger.record(carry)
                            carry = None
                        await asyncio.sleep(min(self.ledger.policy.backoff_ms / 1000, 2.0))
            finally:
                if carry is not None:
                    await self.ledger.record(carry)
                del self.state.held[token]
            if relay_failures >= RELAY_FAILURES_IN_A_ROW:
                log.warning("relay unavailable; session ends", extra={"failures": relay_failures})
                self.state.relay_gave_up += 1
                return

    async def _send_one(self, session: Session, lane: Lane, item: Claimed,
                        carry: Record | None
                        ) -> tuple[Outcome, Record | None]:
        """Offer one message; returns the SMTP outcome and the record it still owes.

        `carry`, the previous message's record, goes to Redis with this message's mark
        (one round trip), or on its own when there is no mark.
        """
        address = str(item.payload.get("address", ""))
        try:
            # In a thread, with a deadline: a runaway template must not stall the run's
            # event loop, which watches for stops and renews leases.
            rendered = await asyncio.wait_for(asyncio.to_thread(
                self.factory.render, item.identity, address,
                dict(item.payload.get("vars") or {})), RENDER_SECONDS)
        except (RenderError, TimeoutError) as err:
            if carry is not None:
                await self.ledger.record(carry)
            self._count(Outcome.FAILED)
            reason = str(err) if isinstance(err, RenderError) else (
                f"template: took longer than {RENDER_SECONDS:.0f} s")
            return Outcome.FAILED, Record(item, "failed", reason)
        marked = False

        async def mark() -> bool:
            nonlocal marked, carry
            if await self.stopping():  # checked right before every handover
                return False
            previous, carry = carry, None
            # What status records of the ledger is known too: a pod that has not marked
            # for a while still refuses a copy older than what its peers wrote there.
            self.ledger.handovers_seen = max(self.ledger.handovers_seen,
                                             self.controls.recorded_handovers(
                                                 self.ledger.ledger_id))
            try:
                status, detail, _ = await self.ledger.mark(item, lane, previous)
            except RedisError as err:
                # Unconfirmed is not marked: the data is not sent. If the mark did land,
                # a takeover later records the recipient as unknown, never as sendable.
                # This pod no longer knows its own count of marks: it stops.
                log.error("mark unconfirmed", extra={"recipient_hash": item.identity_hash,
                                                     "error": str(err)})
                self.state.stop_reason = self.state.stop_reason or "LedgerUnavailable"
                lane.unsure = True
                return False
            marked = status == "ok"
            if status == "stopped" and not self.state.stop_reason:
                self.state.stop_reason = detail  # seen first by another pod, or LedgerLost
                if detail == "LedgerLost":  # every pod's next mark refuses too
                    await self.ledger.announce_stop(detail)
            return marked

        result = await session.send(rendered.envelope_from, address, rendered.data, mark)
        if carry is not None:  # no mark happened
            await self.ledger.record(carry)
        self._count(result.outcome)
        if result.outcome is Outcome.NOT_MARKED:
            if self.state.stop_reason:  # not offered because the run stops: free it now
                return result.outcome, Record(item, "release", "run stopped", delay_ms=0)
            return result.outcome, None
        if result.outcome is Outcome.RELAY:
            return result.outcome, Record(item, "release", result.reason)
        if result.outcome is Outcome.UNKNOWN:
            self.state.unknown_in_a_row += 1
            log.warning("ambiguous delivery", extra={"recipient_hash": item.identity_hash,
                                                      "reason": result.reason})
            await asyncio.to_thread(self.on_unknown, item.identity_hash, result.reason)
            if self.state.unknown_in_a_row >= UNKNOWN_IN_A_ROW:
                self.state.stop_reason = "RelayUnhealthy"
        elif result.outcome is Outcome.SENT:
            self.state.unknown_in_a_row = 0
        # A refusal before the mark (RCPT) uses an attempt here; after it, the mark did.
        return result.outcome, Record(item, result.outcome.value, result.reason,
                                      uses_attempt=result.outcome is Outcome.RETRY and not marked)

    def _count(self, outcome: Outcome) -> None:
        self.state.outcomes[outcome.value] = self.state.outcomes.get(outcome.value, 0) + 1


async def choose_dedupe_key(client: aioredis.Redis, namespace: str, name: str,
                            spec: CampaignSpec, shown: str = "") -> tuple[str, bool]:
    """(the key in force, whether spec.message changed since it was fixed).

    spec.delivery.dedupeKey wins when set. Unset, the key is the one fixed at the first send
    (a hash of spec.message then), kept in Redis, or else the one status shows (`shown`: a
    ledger adopted after a loss); a message that hashes otherwise now is a content change,
    which pauses delivery until the person sets spec.delivery.dedupeKey.
    """
    where = CampaignKeys(namespace, name, "").key_in_force
    if spec.delivery.dedupe_key:
        await client.set(where, spec.delivery.dedupe_key)
        return spec.delivery.dedupe_key, False
    content = content_key(spec.message)
    stored = await client.get(where)
    if stored is None:
        await client.set(where, shown or content, nx=True)
        stored = await client.get(where)  # a peer may have fixed it first
    key = stored.decode() if isinstance(stored, bytes) else str(stored)
    return key, key != content


async def settle_ledger(client: aioredis.Redis, source: CampaignSource,
                        body: dict[str, Any], known: dict[str, Any] | None = None,
                        seen_lost: bool = False) -> LedgerCheck:
    """Check the ledger against the campaign's record (herald_jobs.loss), or what this run
    saw of it (`known`), and say so in status and Events; the record is in status before
    anything is sent. `seen_lost`: this run saw the ledger change under it (its own marks
    gone, another id, a stop for a loss), which stands even if the counter has since grown
    back past what it knew."""
    check = await check_ledger(client, CampaignKeys(source.namespace, source.name, ""), body,
                               known)
    status = body.get("status") or {}
    if check.result == "lost" or (seen_lost and not status.get("ledgerLoss")):
        reason = check.reason() if check.result == "lost" else (
            "the ledger changed under a run: marks it had made were gone, or it was "
            "replaced (an older copy restored, a failover to a replica that lagged)")
        found = check.record if check.id else None
        loss = await asyncio.to_thread(source.record_loss, body, {
            "id": secrets.token_hex(8), "reason": reason,
            "detectedAt": stamp(dt.datetime.now(dt.UTC)), "expected": check.recorded,
            "found": found})
        command = acknowledge_loss_command(source.namespace, source.name, loss["id"])
        await asyncio.to_thread(
            source.event, body, "Warning", "LedgerLost",
            f"{loss['reason']}. Nothing is sent: recipients the lost ledger knew could get the "
            f"message again. Restore the ledger, or accept that risk with: {command}")
        return LedgerCheck("lost", check.id, check.handovers, check.recorded)
    elif check.result == "adopted":
        if (status.get("ledger") or {}).get("id") == check.id:
            return check  # a peer of this run adopted it and said so
        # Counts start again with the adopted ledger: what the lost one counted is gone.
        await asyncio.to_thread(source.patch_status, {
            "ledger": check.record, "ledgerLoss": None, "countsVersion": 0})
        await client.delete(CampaignKeys(source.namespace, source.name, "").stop)
        await asyncio.to_thread(
            source.event, body, "Warning", "LedgerLossAcknowledged",
            f"delivery goes on with the ledger found, now ledger {check.id} with "
            f"{check.handovers} handovers; recipients it does not know as sent may get the "
            "message again")
    elif status.get("ledger") is None:
        await asyncio.to_thread(source.patch_status, {"ledger": check.record})
    return check


async def run_job(source: CampaignSource, redis_url: str, accept_unverified: bool) -> int:
    started = time.monotonic()
    body = await asyncio.to_thread(source.read)
    spec = CampaignSpec.model_validate(body.get("spec") or {})
    relay = with_default_relay(spec.smtp, os.environ)
    if relay is None:
        raise SpecProblem("spec.smtp.host: not set, and this install has no default SMTP "
                          "relay (HERALD_DEFAULT_SMTP_HOST)")
    spec = spec.model_copy(update={"smtp": relay})
    controls = Controls(source.api, source.namespace, source.name,
                        body["metadata"]["generation"], spec.windows, ZoneInfo(spec.time_zone))
    client = aioredis.Redis.from_url(redis_url)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: setattr(controls, "signalled", "Terminated"))
    state, counts, dedupe_key = RunState(), {}, ""
    try:
        controls.start()  # stopped in `finally`: no thread outlives the run
        await check_durable(client, accept_unverified)
        check = await settle_ledger(client, source, body)
        if check.result == "lost":
            state.stop_reason = "LedgerLost"  # nothing is written to a ledger that is not ours
        else:
            dedupe_key, content_changed = await choose_dedupe_key(
                client, source.namespace, source.name, spec,
                (body.get("status") or {}).get("dedupeKey") or "")
            d = spec.delivery
            policy = Policy(d.guarantee, d.max_attempts, d.backoff_seconds * 1000,
                            d.lease_seconds * 1000)
            ledger = Ledger(client, CampaignKeys(source.namespace, source.name, dedupe_key),
                            policy, check.id, check.handovers)
            state = await _deliver(source, body, spec, client, ledger, controls, content_changed)
            counts = await ledger.counts()
            if state.stop_reason == "LedgerLost":  # it went while this run was sending
                await settle_ledger(client, source, await asyncio.to_thread(source.read),
                                    {"id": ledger.ledger_id, "handovers": ledger.handovers_seen},
                                    seen_lost=True)
    finally:
        await asyncio.to_thread(controls.stop)
        loop.remove_signal_handler(signal.SIGTERM)
        with contextlib.suppress(Exception):
            await client.aclose()
    log.info("run finished", extra={
        "campaign": f"{source.namespace}/{source.name}", "dedupe_key": dedupe_key,
        "result": state.stop_reason or "Done", "outcomes": state.outcomes, "counts": counts,
        "seconds": round(time.monotonic() - started, 3), "pod": os.environ.get(
            "HERALD_POD_NAME", "")})
    return 0


async def _deliver(source: CampaignSource, body: dict[str, Any], spec: CampaignSpec,
                   client: aioredis.Redis, ledger: Ledger, controls: Controls,
                   content_changed: bool) -> RunState:
    """Once the run may send: seed the audience, send, and report in status and Events."""
    state = RunState()
    dedupe_key = ledger.keys.dedupe_key
    await asyncio.to_thread(controls.wait_confirmed)
    reason = controls.reason() or ("ContentChanged" if content_changed else "")
    if content_changed:
        await asyncio.to_thread(source.patch_status, {"dedupeKey": dedupe_key})
        await asyncio.to_thread(
            source.event, body, "Warning", "ContentChanged",
            f"spec.message changed since the first send under dedupe key {dedupe_key}; "
            f"nothing is sent until spec.delivery.dedupeKey is set: to {dedupe_key} to go "
            "on without resending, or to a new value for a new round to everybody")
    if reason:
        state.stop_reason = reason  # nothing to do now: not even seeding
        return state
    await ledger.clear_stop()
    audience = await asyncio.to_thread(source.audience, spec)
    credentials = await asyncio.to_thread(source.credentials, spec)
    writer = StatusWriter(source, ledger, dedupe_key)
    await seed(client, ledger, audience)
    pending = (await ledger.counts()).get("pending", 0)
    await asyncio.to_thread(source.event, body, "Normal", "RunStarted",
                            f"run started by {writer.job or 'a pod'}; {pending} pending")
    writer.audience_version = audience.version()
    factory = MessageFactory(spec.message, source.namespace, source.name, dedupe_key)
    run = Run(spec, ledger, factory, credentials, controls,
              on_unknown=lambda who, why: source.event(
                  body, "Warning", "AmbiguousDelivery",
                  f"recipient {who}: {why}; recorded as unknown"))
    sent = lambda: run.state.outcomes.get("sent", 0)  # noqa: E731
    updates = asyncio.create_task(writer.every(sent))
    try:
        state = await run.deliver()
    finally:
        updates.cancel()
    if not await ledger.still_ours():  # gone while the run was between batches, too
        state.stop_reason = "LedgerLost"
        await ledger.announce_stop(state.stop_reason)
    await writer.write(sent(), result=state.stop_reason or "Done")
    with contextlib.suppress(RedisError):
        await ledger.forget_lanes()
    counts = await ledger.counts()
    totals = ", ".join(f"{f} {counts.get(f, 0)}" for f in ("sent", "failed", "unknown", "pending"))
    await asyncio.to_thread(
        source.event, body,
        "Warning" if state.stop_reason == "RelayUnhealthy" else "Normal", "RunFinished",
        f"{state.stop_reason or 'Done'}: sent {sent()} in this run; now {totals}")
    return state
