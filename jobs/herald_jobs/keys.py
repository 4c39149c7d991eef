"""Every Redis key Herald uses, in one place.

All keys of one campaign share the hash tag `{namespace/name}`, so they live in one slot
and the ledger's scripts also run on Redis Cluster. The ledger belongs to namespace/name,
not to the resource's uid: a deleted and re-applied campaign finds its history.
"""

from __future__ import annotations

from dataclasses import dataclass

RETENTION_SECONDS = 400 * 24 * 3600  # the ledger outlives the last send by 400 days


@dataclass(frozen=True)
class CampaignKeys:
    namespace: str
    name: str
    dedupe_key: str

    @property
    def _base(self) -> str:
        return f"herald:{{{self.namespace}/{self.name}}}"

    @property
    def _round(self) -> str:
        return f"{self._base}:{self.dedupe_key}"

    # One hash per round: recipient identity → its ledger entry (JSON).
    @property
    def ledger(self) -> str:
        return f"{self._round}:ledger"

    # identity → {"address": …, "vars": …}: what to send, written at seeding.
    @property
    def recipients(self) -> str:
        return f"{self._round}:recipients"

    # Sorted set of pending identities, scored by the time they may be tried (ms).
    @property
    def queue(self) -> str:
        return f"{self._round}:queue"

    # Sorted set of claimed identities, scored by their lease's expiry (ms).
    @property
    def leases(self) -> str:
        return f"{self._round}:leases"

    # identity → the fencing token of the claim that holds it.
    @property
    def holders(self) -> str:
        return f"{self._round}:holders"

    # Counts shown in status (sent, failed, unknown, pending, …) and their version.
    @property
    def counts(self) -> str:
        return f"{self._round}:counts"

    # The audience version last seeded, and the lock held while seeding.
    @property
    def seeded(self) -> str:
        return f"{self._round}:seeded"

    @property
    def seed_lock(self) -> str:
        return f"{self._round}:seed-lock"

    def seen(self, audience_version: str) -> str:
        """Identities met while seeding one audience version (duplicate detection)."""
        return f"{self._round}:seen:{audience_version}"

    # Set by the first pod that sees a suspend or halt; every pod's mark honours it.
    @property
    def stop(self) -> str:
        return f"{self._base}:stop"

    # The dedupe key in force: fixed at the first send, kept with the ledger, so a deleted
    # and re-applied campaign (whose status is gone) still finds it.
    @property
    def key_in_force(self) -> str:
        return f"{self._base}:dedupe-key"

    # The token bucket that holds every pod of the campaign to ratePerSecond.
    @property
    def rate(self) -> str:
        return f"{self._base}:rate"

    # The ledger's identity and handover counter (hash: id, handovers), recorded in the
    # campaign's status too: a ledger that is gone, another one, or an older one is a loss.
    @property
    def identity(self) -> str:
        return f"{self._base}:identity"

    # The fencing-token counter of the whole campaign.
    @property
    def fence(self) -> str:
        return f"{self._base}:fence"
