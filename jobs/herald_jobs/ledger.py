"""The ledger: what was sent to whom, and who may send what next.

THE DELIVERY GUARANTEE. Every recipient of a round (campaign namespace/name + dedupe key)
has one ledger entry whose state only moves forward:

    pending ──mark──▶ handing ──▶ sent | unknown | failed          (terminal)
       ▲                 │
       └──── retry ◀─────┘ (only on a definite answer, or under AtLeastOnce)
    pending ──▶ failed (invalid address, render error, permanent reply, out of attempts)
    pending ──▶ withdrawn (left the audience before it was sent)

A pod works on a recipient only while it holds the recipient's lease: a claim gives a
batch a fresh fencing token and an expiry kept in Redis (Redis's clock, not the pod's).
The last step before a message's data goes to SMTP is `mark`: a script that moves the entry
from pending to handing *only if* the caller's token still holds an unexpired lease. A pod
that was paused, cut off or simply slow past its lease therefore cannot hand over anything
another pod has since taken; the mark is never skipped for speed.

Why each outcome is what it is:
- sent: the server answered the data with 2xx. Terminal; never sent again in this round.
- unknown: the server said 354 ("go ahead") and then nothing we could read as 2xx — a
  timeout, a dropped connection, another code. It may well have taken the message (the
  03:30 incident), so under AtMostOnce this is terminal and never resent. Under AtLeastOnce
  it is retried with the same Message-ID, at most maxAttempts times in all.
- retry: a definite temporary refusal before the data (a 4xx to RCPT, or to DATA itself):
  the server did not take the message, so trying again later cannot duplicate it. It uses
  one of the recipient's attempts; out of attempts it is failed.
- release: the recipient was never offered (the relay was down or refused the connection,
  or the run is stopping): back to pending without using an attempt.
- failed: a permanent 5xx, an invalid address or a template that cannot be rendered.
- A pod that takes over an expired lease finds each recipient either still pending (it
  was never handed over: tried again) or handing (it may have been sent: unknown under
  AtMostOnce, retried under AtLeastOnce). A crash costs at most the messages in flight.

The ledger and its counts live for 400 days after the last send, keyed by namespace/name,
so a deleted and re-applied campaign resends nothing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from herald_jobs.keys import RETENTION_SECONDS, CampaignKeys

COUNT_FIELDS = ("total", "pending", "sent", "failed", "unknown", "withdrawn",
                "duplicatesInAudience", "duplicatesPrevented")

# Shared Lua: Redis's clock in ms, a counter move, and entry (de)serialisation.
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function move(counts, from, to)
  if from then redis.call('HINCRBY', counts, from, -1) end
  if to then redis.call('HINCRBY', counts, to, 1) end
  redis.call('HINCRBY', counts, 'version', 1)
end
local function get_entry(ledger, id)
  local raw = redis.call('HGET', ledger, id)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function put_entry(ledger, id, e)
  redis.call('HSET', ledger, id, cjson.encode(e))
end
"""

# KEYS: ledger, recipients, queue, counts, seen
# ARGV: retention seconds, then (identity, payload JSON, invalid reason or "") triples.
# New recipients become pending (queued now) or failed (invalid address); a repeat within
# this audience counts as a duplicate; a recipient the ledger already has keeps its state.
_SEED = _PRELUDE + """
local now = now_ms()
local added = 0
for i = 2, #ARGV, 3 do
  local id, payload, invalid = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('SADD', KEYS[5], id) == 0 then
    redis.call('HINCRBY', KEYS[4], 'duplicatesInAudience', 1)
  else
    local e = get_entry(KEYS[1], id)
    if not e then
      redis.call('HINCRBY', KEYS[4], 'total', 1)
      if invalid ~= '' then
        put_entry(KEYS[1], id, {s = 'failed', a = 0, r = invalid, u = now})
        move(KEYS[4], nil, 'failed')
      else
        redis.call('HSET', KEYS[2], id, payload)
        put_entry(KEYS[1], id, {s = 'pending', a = 0, u = now})
        redis.call('ZADD', KEYS[3], now, id)
        move(KEYS[4], nil, 'pending')
        added = added + 1
      end
    elseif e.s == 'pending' then
      redis.call('HSET', KEYS[2], id, payload)  -- not sent yet: the newest variables count
    elseif e.s == 'withdrawn' and invalid == '' then  -- back in the audience
      redis.call('HSET', KEYS[2], id, payload)
      e.s = 'pending'
      e.u = now
      put_entry(KEYS[1], id, e)
      redis.call('ZADD', KEYS[3], now, id)
      move(KEYS[4], 'withdrawn', 'pending')
      added = added + 1
    end
  end
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
redis.call('EXPIRE', KEYS[5], 86400)  -- only needed while seeding
return added
"""

# KEYS: ledger, queue, counts, seen
# ARGV: identities
# After a new audience version is seeded: each still-pending recipient it no longer has
# is withdrawn (its pending mark, if any pod is about to make one, will be refused).
_WITHDRAW = _PRELUDE + """
local n = 0
for _, id in ipairs(ARGV) do
  local e = get_entry(KEYS[1], id)
  if e and e.s == 'pending' and redis.call('SISMEMBER', KEYS[4], id) == 0 then
    e.s = 'withdrawn'
    e.u = now_ms()
    put_entry(KEYS[1], id, e)
    redis.call('ZREM', KEYS[2], id)
    move(KEYS[3], 'pending', 'withdrawn')
    n = n + 1
  end
end
return n
"""

# KEYS: queue, leases, holders, fence, ledger, recipients, counts
# ARGV: how many, lease ms, guarantee, max attempts, retention seconds
# First takes over expired leases (see the module docstring), then claims up to `how many`
# recipients that are due, under a new fencing token.
# Returns {token, id1, payload1, attempts1, id2, …}.
_CLAIM = _PRELUDE + """
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  local e = get_entry(KEYS[5], id)
  if e and e.s == 'handing' then
    if ARGV[3] == 'AtLeastOnce' and e.a < tonumber(ARGV[4]) then
      e.s = 'pending'
      redis.call('ZADD', KEYS[1], now, id)
    else
      e.s = 'unknown'
      e.r = 'lease expired while handing over'
      move(KEYS[7], 'pending', 'unknown')
    end
    e.u = now
    put_entry(KEYS[5], id, e)
  elseif e and e.s == 'pending' then
    redis.call('ZADD', KEYS[1], now, id)
  end
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
if #ids == 0 then return out end
local token = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[5])
out[1] = token
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
  redis.call('HSET', KEYS[3], id, token)
  local e = get_entry(KEYS[5], id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[6], id) or ''
  out[#out + 1] = e and e.a or 0
end
return out
"""

# The send path's two steps, as functions over the same eight KEYS:
# ledger, leases, holders, queue, counts, recipients, stop, identity.
#
# mark(identity, token, ledger id, handovers seen, lane, lane's marks): the fenced mark,
# pending → handing, only under the caller's unexpired lease, while no pod has seen a stop
# (suspend, halt) and while the ledger is still the one the run checked (herald_jobs.loss):
# the same id, at least as many handovers as the caller knows of, and the caller's own
# count of marks (one per SMTP session: a lane marks one message at a time) exactly as it
# left it. An older copy restored under a run fails the last test for every lane that
# marked since the copy was taken, however far others have pushed the shared counter back
# up. Counts the handover.
# Returns {'ok', attempts, handovers} | {'lost'} | {'stopped', reason} | {'done', state}.
#
# record(identity, token, outcome, reason, guarantee, max attempts, requeue delay ms,
#        uses an attempt '1'/'0', retention seconds): records an outcome for a recipient the
# caller holds. A late `sent` for a recipient another pod already declared unknown (same
# token) still counts: it is the truth. Returns the new state, or 'stale'.
_SEND_PATH = _PRELUDE + """
local function mark(id, token, ledger_id, seen, lane, lane_marks)
  local stop = redis.call('GET', KEYS[7])
  if stop then return {'stopped', stop} end
  local ledger = redis.call('HMGET', KEYS[8], 'id', 'handovers', lane)
  if ledger[1] ~= ledger_id or tonumber(ledger[2] or '0') < tonumber(seen)
      or tonumber(ledger[3] or '0') ~= tonumber(lane_marks) then
    return {'stopped', 'LedgerLost'}
  end
  if redis.call('HGET', KEYS[3], id) ~= token then return {'lost'} end
  local expiry = redis.call('ZSCORE', KEYS[2], id)
  if not expiry or tonumber(expiry) <= now_ms() then return {'lost'} end
  local e = get_entry(KEYS[1], id)
  if not e or e.s ~= 'pending' then
    redis.call('HINCRBY', KEYS[5], 'duplicatesPrevented', 1)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    return {'done', e and e.s or 'missing'}
  end
  e.s = 'handing'
  e.a = e.a + 1
  e.t = token
  e.u = now_ms()
  put_entry(KEYS[1], id, e)
  redis.call('HINCRBY', KEYS[8], lane, 1)
  return {'ok', e.a, redis.call('HINCRBY', KEYS[8], 'handovers', 1)}
end

local function record(id, token, outcome, reason, guarantee, max_attempts, delay,
                      uses_attempt, retention)
  local now = now_ms()
  local e = get_entry(KEYS[1], id)
  if not e then return 'stale' end
  if redis.call('HGET', KEYS[3], id) ~= token then
    if outcome == 'sent' and e.s == 'unknown' and e.t == token then
      e.s = 'sent'
      e.r = nil
      e.u = now
      put_entry(KEYS[1], id, e)
      move(KEYS[5], 'unknown', 'sent')
      return 'sent'
    end
    return 'stale'
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  if uses_attempt == '1' then e.a = e.a + 1 end
  e.u = now
  e.r = reason ~= '' and reason or nil
  local function requeue()
    e.s = 'pending'
    redis.call('ZADD', KEYS[4], now + tonumber(delay), id)
  end
  if outcome == 'sent' or outcome == 'failed' then
    e.s = outcome
  elseif outcome == 'unknown' then
    if guarantee == 'AtLeastOnce' and e.a < tonumber(max_attempts) then
      requeue()
    else
      e.s = 'unknown'
    end
  elseif outcome == 'retry' then
    if e.a < tonumber(max_attempts) then
      requeue()
    else
      e.s = 'failed'
      e.r = 'out of attempts: ' .. reason
    end
  else  -- release: never offered, no attempt used
    requeue()
  end
  put_entry(KEYS[1], id, e)
  if e.s ~= 'pending' then move(KEYS[5], 'pending', e.s) end
  if e.s == 'sent' then
    for _, i in ipairs({1, 4, 5, 6, 8}) do redis.call('EXPIRE', KEYS[i], retention) end
  end
  return e.s
end
"""
_MARK = _SEND_PATH + "return mark(unpack(ARGV, 1, 6))"
_RECORD = _SEND_PATH + "return record(unpack(ARGV, 1, 9))"
# The previous message's outcome and the next message's mark in one round trip.
_RECORD_THEN_MARK = _SEND_PATH + """
local state = record(unpack(ARGV, 1, 9))
local marked = mark(unpack(ARGV, 10, 15))
return {state, marked}
"""

# KEYS: leases, holders
# ARGV: token, lease ms, identities…
# Extends the leases the token still holds; returns how many.
_RENEW = _PRELUDE + """
local expiry = now_ms() + tonumber(ARGV[2])
local renewed = 0
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
"""


# KEYS: bucket
# ARGV: rate per second, tokens wanted
# A token bucket on Redis's clock, shared by every pod of the campaign; it holds 100 ms of
# tokens at most, so a run starts without a burst. Returns {granted, ms to wait if none}.
_TAKE_TOKENS = _PRELUDE + """
local rate, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst = math.max(1, math.ceil(rate / 10))
local now = now_ms()
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local since = now - (tonumber(b[2]) or now)
tokens = math.min(burst, tokens + since * rate / 1000)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], 60000)
if granted > 0 then return {granted, 0} end
return {0, math.ceil((1 - tokens) * 1000 / rate)}
"""


@dataclass(frozen=True)
class Claimed:
    identity: str
    payload: dict[str, Any]
    attempts: int
    token: str

    @property
    def identity_hash(self) -> str:
        """For logs and Events, which never show an address."""
        return hashlib.sha256(self.identity.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Record:
    """What happened to a claimed recipient, to be written to the ledger."""

    item: Claimed
    outcome: str  # sent | unknown | retry | failed | release
    reason: str = ""
    uses_attempt: bool = False
    delay_ms: int | None = None  # when a requeued recipient is due (default: backoff)


@dataclass
class Lane:
    """One SMTP session's own count of marks, kept in the ledger's identity hash too."""

    field: str
    marks: int = 0
    unsure: bool = False  # a mark whose answer was lost: the count may be one more


@dataclass(frozen=True)
class Policy:
    guarantee: str
    max_attempts: int
    backoff_ms: int
    lease_ms: int


class Ledger:
    """The scripts above, bound to one round's keys."""

    def __init__(self, client: aioredis.Redis, keys: CampaignKeys, policy: Policy,
                 ledger_id: str, handovers: int = 0) -> None:
        self.redis = client
        self.keys = keys
        self.policy = policy
        # The ledger as checked at the run's start (herald_jobs.loss), and the most
        # handovers seen in it since: a mark that finds fewer finds an older copy.
        self.ledger_id = ledger_id
        self.handovers_seen = handovers
        self.lanes: list[Lane] = []
        self._seed = client.register_script(_SEED)
        self._claim = client.register_script(_CLAIM)
        self._mark = client.register_script(_MARK)
        self._record = client.register_script(_RECORD)
        self._record_then_mark = client.register_script(_RECORD_THEN_MARK)
        self._take_tokens = client.register_script(_TAKE_TOKENS)
        self._withdraw = client.register_script(_WITHDRAW)
        self._renew = client.register_script(_RENEW)
        self._clear_stop = client.register_script(
            "if redis.call('GET', KEYS[1]) ~= 'LedgerLost' then redis.call('DEL', KEYS[1]) end")

    async def seed(self, audience_version: str,
                   batch: Iterable[tuple[str, dict[str, Any] | None, str]]) -> int:
        """Add (identity, payload, invalid reason) rows; returns how many became pending."""
        k = self.keys
        argv: list[Any] = [RETENTION_SECONDS]
        for identity, payload, invalid in batch:
            argv += [identity, json.dumps(payload) if payload else "", invalid]
        if len(argv) == 1:
            return 0
        added = await self._seed(
            keys=[k.ledger, k.recipients, k.queue, k.counts, k.seen(audience_version)],
            args=argv)
        return int(added)

    async def withdraw_absent(self, audience_version: str) -> int:
        """Withdraw the pending recipients the just-seeded audience no longer has."""
        k = self.keys
        withdrawn = 0
        async for batch in _pending_batches(self.redis, k.ledger):
            withdrawn += int(await self._withdraw(
                keys=[k.ledger, k.queue, k.counts, k.seen(audience_version)], args=batch))
        return withdrawn

    async def claim(self, how_many: int) -> list[Claimed]:
        k, p = self.keys, self.policy
        out = await self._claim(
            keys=[k.queue, k.leases, k.holders, k.fence, k.ledger, k.recipients, k.counts],
            args=[how_many, p.lease_ms, p.guarantee, p.max_attempts, RETENTION_SECONDS])
        if not out:
            return []
        token = _text(out[0])
        rows = out[1:]
        return [
            Claimed(_text(rows[i]), json.loads(rows[i + 1]) if rows[i + 1] else {},
                    int(rows[i + 2]), token)
            for i in range(0, len(rows), 3)
        ]

    @property
    def _send_keys(self) -> list[str]:
        k = self.keys
        return [k.ledger, k.leases, k.holders, k.queue, k.counts, k.recipients, k.stop,
                k.identity]

    def _record_args(self, done: Record) -> list[Any]:
        p = self.policy
        delay = p.backoff_ms if done.delay_ms is None else done.delay_ms
        return [done.item.identity, done.item.token, done.outcome, done.reason[:500],
                p.guarantee, p.max_attempts, delay, int(done.uses_attempt), RETENTION_SECONDS]

    def lane(self) -> Lane:
        """A new lane for one SMTP session of this run (see the send path's mark)."""
        lane = Lane(f"lane:{secrets.token_hex(6)}")
        self.lanes.append(lane)
        return lane

    async def mark(self, item: Claimed, lane: Lane, previous: Record | None = None
                   ) -> tuple[str, str, str | None]:
        """The fenced mark: ('ok' | 'lost' | 'stopped' | 'done', its detail: the attempt,
        the stop's reason or the state found; the previous outcome's state).

        With `previous`, that outcome is recorded first in the same script call, so the
        send path costs one Redis round trip per message.
        """
        state = None
        mark_args: list[Any] = [item.identity, item.token, self.ledger_id, self.handovers_seen,
                                lane.field, lane.marks]
        if previous is None:
            out = await self._mark(keys=self._send_keys, args=mark_args)
        else:
            state, out = await self._record_then_mark(
                keys=self._send_keys, args=[*self._record_args(previous), *mark_args])
        if len(out) > 2:
            self.handovers_seen = max(self.handovers_seen, int(out[2]))
            lane.marks += 1
        detail = _text(out[1]) if len(out) > 1 else ""
        return _text(out[0]), detail, None if state is None else _text(state)

    async def record(self, done: Record) -> str:
        """Record an outcome on its own (the last of a batch, or one with no mark after it)."""
        return _text(await self._record(keys=self._send_keys, args=self._record_args(done)))

    async def renew(self, token: str, identities: list[str]) -> int:
        if not identities:
            return 0
        k = self.keys
        return int(await self._renew(keys=[k.leases, k.holders],
                                     args=[token, self.policy.lease_ms, *identities]))

    async def take_tokens(self, rate: int, want: int) -> tuple[int, int]:
        """(tokens granted, ms to wait before asking again when none was)."""
        granted, wait = await self._take_tokens(keys=[self.keys.rate], args=[rate, want])
        return int(granted), int(wait)

    async def announce_stop(self, reason: str) -> None:
        """Tell every pod's mark to refuse: this campaign is suspended or halted."""
        await self.redis.set(self.keys.stop, reason)

    async def clear_stop(self) -> None:
        """A run that has confirmed it may send lifts an earlier suspend or halt; a stop
        for a lost ledger stays until that loss is acknowledged (herald_jobs.loss)."""
        await self._clear_stop(keys=[self.keys.stop])

    async def counts(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.counts)
        return {_text(key): int(value) for key, value in raw.items()}

    async def still_ours(self) -> bool:
        """Whether the ledger is still the one the run checked (herald_jobs.loss): the
        same id, at least the handovers seen since, every lane's marks all there."""
        found, handovers, *lanes = await self.redis.hmget(
            self.keys.identity, ["id", "handovers", *(lane.field for lane in self.lanes)])
        return (found is not None and _text(found) == self.ledger_id
                and int(handovers or 0) >= self.handovers_seen
                and all(int(n or 0) == lane.marks for n, lane in zip(lanes, self.lanes,
                                                                      strict=True)
                        if not lane.unsure))

    async def forget_lanes(self) -> None:
        """At the end of a run: its lanes' counts are no longer needed."""
        if self.lanes:
            await self.redis.hdel(self.keys.identity, *(lane.field for lane in self.lanes))

    async def counts_and_identity(self) -> tuple[dict[str, int], dict[str, str]]:
        """The counts and the ledger's identity as of one moment."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.counts)
            pipe.hgetall(self.keys.identity)
            counts, identity = await pipe.execute()
        return ({_text(k): int(v) for k, v in counts.items()},
                {_text(k): _text(v) for k, v in identity.items()})

    async def entry(self, identity: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.keys.ledger, identity)
        return json.loads(raw) if raw else None

    async def unfinished(self) -> bool:
        """Whether anything is still queued or leased, by anyone."""
        k = self.keys
        queued, leased = await self.redis.zcard(k.queue), await self.redis.zcard(k.leases)
        return bool(queued or leased)


async def _pending_batches(client: aioredis.Redis, ledger: str) -> AsyncIterator[list[str]]:
    batch: list[str] = []
    async for identity, raw in client.hscan_iter(ledger, count=500):
        if b'"s":"pending"' in raw:
            batch.append(_text(identity))
            if len(batch) == 500:
                yield batch
                batch = []
    if batch:
        yield batch


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
