"""Ledger loss: a run checks that the ledger is the one its campaign last wrote to.

The ledger carries an identity (an id made when it is created) and a handover counter
(grown by every fenced mark). The campaign's status records both (`status.ledger`): before
a run's first send and with every count update. Before a run sends anything, it compares:

- no record in status: the campaign's first run, or one re-applied after a delete (the
  ledger outlives the resource): the ledger found, or a new one, is used and recorded;
- the recorded id, with a counter at least the recorded one: go on;
- anything else is a loss: no ledger (Redis lost its data, or this is a new Redis),
  another id (another Redis), a lower counter (a snapshot older than the record). Sending
  now could resend to everyone the lost ledger knew, so the run sends nothing and records
  `status.ledgerLoss`; the operator shows phase Halted, reason LedgerLost.

Each loss detected gets an id of its own (status.ledgerLoss.id), and stays until a person
acknowledges it by setting the annotation LEDGER_LOSS_ACK to that id, even if the ledger
comes back (a counter that grew again after a restore looks just like a good ledger). The
next run then adopts the ledger under a new id, derived from the loss's id so that every
pod of that run agrees on it, but only if Redis still holds what the loss recorded as
found: if it changed since (restored, lost again), that is a new loss with a new id. So an
acknowledgement covers exactly what the person was shown. A restored ledger, acknowledged,
is adopted as it is and resends nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from herald_api.names import LEDGER_LOSS_ACK
from herald_jobs.keys import CampaignKeys

# KEYS: identity
# ARGV: recorded id ('' when status has none), recorded handovers, id for a new ledger,
#       then, while a loss is unresolved: '1', the id it found ('' for none), the handovers
#       it found, and the id to adopt under ('' unless a person acknowledged that loss).
# Returns {'ok' | 'adopted' | 'lost', id ('' when there is none), handovers}.
_CHECK = """
local id = redis.call('HGET', KEYS[1], 'id')
local handovers = tonumber(redis.call('HGET', KEYS[1], 'handovers') or '0')
if ARGV[4] ~= '1' then
  if ARGV[1] == '' then
    if not id then
      id = ARGV[3]
      handovers = 0
      redis.call('HSET', KEYS[1], 'id', id, 'handovers', 0)
    end
    return {'ok', id, handovers}
  end
  if id == ARGV[1] and handovers >= tonumber(ARGV[2]) then return {'ok', id, handovers} end
  return {'lost', id or '', handovers}
end
-- An unresolved loss: only its acknowledgement ends it, and only while Redis still holds
-- what the person was shown (or what a peer of this run adopted from it).
if ARGV[7] ~= '' and id == ARGV[7] then return {'adopted', id, handovers} end
local shown = (id or '') == ARGV[5] and (not id or handovers == tonumber(ARGV[6]))
if ARGV[7] ~= '' and shown then
  redis.call('HSET', KEYS[1], 'id', ARGV[7], 'handovers', handovers)
  return {'adopted', ARGV[7], handovers}
end
return {'lost', id or '', handovers}
"""


@dataclass(frozen=True)
class LedgerCheck:
    result: str  # ok | adopted | lost
    id: str  # the ledger's id now ('' when there is none)
    handovers: int
    recorded: dict[str, Any]  # what status recorded ({} when nothing)

    @property
    def record(self) -> dict[str, Any]:
        return {"id": self.id, "handovers": self.handovers}

    def reason(self) -> str:
        expected = f"{self.recorded.get('id')} with {self.recorded.get('handovers', 0)} handovers"
        if not self.id:
            return f"the ledger is gone: Redis has no ledger for this campaign; status " \
                   f"records ledger {expected}"
        if self.id != self.recorded.get("id"):
            return f"another ledger: Redis has ledger {self.id}; status records {expected}"
        return f"an older ledger: Redis has {self.handovers} handovers; status records {expected}"


def adopted_id(loss_id: str) -> str:
    return hashlib.sha256(f"{loss_id}:acknowledged".encode()).hexdigest()[:16]


async def check_ledger(client: aioredis.Redis, keys: CampaignKeys, campaign: dict[str, Any],
                       known: dict[str, Any] | None = None) -> LedgerCheck:
    """Compare the ledger in Redis with the campaign's record of it (see the docstring):
    status.ledger, the ledger an unresolved loss expected, or `known`, what a run saw
    itself, whichever is the newest record of one ledger. While a loss is unresolved the
    answer stays 'lost' until that loss is acknowledged."""
    status = campaign.get("status") or {}
    recorded: dict[str, Any] = status.get("ledger") or {}
    loss = status.get("ledgerLoss") or {}
    for other in (loss.get("expected"), known):
        if other and (not recorded or (other["id"] == recorded.get("id")
                                       and other["handovers"] > recorded.get("handovers", 0))):
            recorded = other
    args: list[Any] = [recorded.get("id", ""), recorded.get("handovers", 0),
                       secrets.token_hex(8)]
    if loss:
        found = loss.get("found") or {}
        acknowledged = (campaign["metadata"].get("annotations") or {}).get(LEDGER_LOSS_ACK)
        adopt = adopted_id(loss["id"]) if acknowledged == loss.get("id") else ""
        args += ["1", found.get("id", ""), found.get("handovers", 0), adopt]
    else:
        args += ["", "", 0, ""]
    script = client.register_script(_CHECK)
    result, found_id, handovers = await script(keys=[keys.identity], args=args)
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in (result, found_id)]
    return LedgerCheck(text[0], text[1], int(handovers), recorded)
