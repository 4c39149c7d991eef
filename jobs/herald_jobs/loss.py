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

Each loss detected gets an id of its own (status.ledgerLoss.id). A person acknowledges
that loss by setting the annotation LEDGER_LOSS_ACK to its id; the next run then adopts
the ledger it finds under a new ledger id, derived from the loss's id so that every pod of
that run agrees on it. An acknowledgement names one loss: it never covers a later one.
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
# ARGV: recorded id ('' when status has none), recorded handovers, id to adopt under
#       ('' when no loss is acknowledged), id for a new ledger
# Returns {'ok' | 'adopted' | 'lost', id ('' when there is none), handovers}.
_CHECK = """
local id = redis.call('HGET', KEYS[1], 'id')
local handovers = tonumber(redis.call('HGET', KEYS[1], 'handovers') or '0')
if ARGV[1] == '' then
  if not id then
    id = ARGV[4]
    redis.call('HSET', KEYS[1], 'id', id, 'handovers', 0)
  end
  return {'ok', id, handovers}
end
if id == ARGV[1] and handovers >= tonumber(ARGV[2]) then return {'ok', id, handovers} end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'id', ARGV[3], 'handovers', handovers)
  return {'adopted', ARGV[3], handovers}
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
    itself, whichever is the newest record of one ledger."""
    status = campaign.get("status") or {}
    recorded: dict[str, Any] = status.get("ledger") or {}
    for other in ((status.get("ledgerLoss") or {}).get("expected"), known):
        if other and (not recorded or (other["id"] == recorded.get("id")
                                       and other["handovers"] > recorded.get("handovers", 0))):
            recorded = other
    loss = (status.get("ledgerLoss") or {}).get("id")
    acknowledged = (campaign["metadata"].get("annotations") or {}).get(LEDGER_LOSS_ACK)
    adopt = adopted_id(loss) if loss and recorded and acknowledged == loss else ""
    script = client.register_script(_CHECK)
    result, found, handovers = await script(keys=[keys.identity], args=[
        recorded.get("id", ""), recorded.get("handovers", 0), adopt, secrets.token_hex(8)])
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in (result, found)]
    return LedgerCheck(text[0], text[1], int(handovers), recorded)

