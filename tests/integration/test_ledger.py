"""The ledger's scripts on a real Redis: fencing, takeover, outcomes, seeding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from herald_jobs.keys import CampaignKeys
from herald_jobs.ledger import Ledger, Policy, Record

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    await c.hset(KEYS.identity, mapping={"id": "L1", "handovers": 0})
    yield c
    await c.aclose()


KEYS = CampaignKeys("ns", "notice", "k1")


def make(client: aioredis.Redis, guarantee: str = "AtMostOnce", lease_ms: int = 60_000,
         max_attempts: int = 3) -> Ledger:
    return Ledger(client, KEYS, Policy(guarantee, max_attempts, backoff_ms=0, lease_ms=lease_ms),
                  ledger_id="L1")


async def seeded(ledger: Ledger, *ids: str) -> None:
    await ledger.seed("v1", [(i, {"address": i, "vars": {}}, "") for i in ids])


async def test_seeding_counts_duplicates_and_invalid_addresses(client: aioredis.Redis) -> None:
    ledger = make(client)
    added = await ledger.seed("v1", [
        ("a@x.org", {"address": "a@x.org", "vars": {}}, ""),
        ("a@x.org", {"address": "A@x.org", "vars": {}}, ""),
        ("bad", None, "not an email address"),
    ])
    assert added == 1
    counts = await ledger.counts()
    assert (counts["total"], counts["pending"], counts["failed"],
            counts["duplicatesInAudience"]) == (2, 1, 1, 1)
    assert (await ledger.entry("bad"))["r"] == "not an email address"


async def test_a_mark_is_refused_once_the_lease_has_expired(client: aioredis.Redis) -> None:
    ledger = make(client, lease_ms=300)
    await seeded(ledger, "a")
    [item] = await ledger.claim(10)
    await asyncio.sleep(0.4)
    assert await ledger.mark(item, ledger.lane()) == ("lost", "", None)
    assert (await ledger.entry("a"))["s"] == "pending"


async def test_a_taken_over_recipient_refuses_the_first_holder(client: aioredis.Redis) -> None:
    ledger = make(client, lease_ms=300)
    await seeded(ledger, "a")
    [first] = await ledger.claim(10)
    await asyncio.sleep(0.4)
    [second] = await ledger.claim(10)  # the lease expired: another pod takes it
    assert second.token != first.token
    assert (await ledger.mark(first, ledger.lane()))[0] == "lost"
    assert (await ledger.mark(second, ledger.lane()))[0] == "ok"


@pytest.mark.parametrize(("guarantee", "after"), [("AtMostOnce", "unknown"),
                                                  ("AtLeastOnce", "pending")])
async def test_takeover_of_a_handed_over_recipient(
    client: aioredis.Redis, guarantee: str, after: str
) -> None:
    ledger = make(client, guarantee=guarantee, lease_ms=300)
    await seeded(ledger, "a", "b")
    first, second = await ledger.claim(10)
    assert second.identity == "b"
    # a was handed over, then the pod died
    assert (await ledger.mark(first, ledger.lane()))[0] == "ok"
    await asyncio.sleep(0.4)
    taken = await ledger.claim(10)
    assert (await ledger.entry("a"))["s"] == after
    # b was never handed over: pending again, under either guarantee
    assert "b" in [t.identity for t in taken]
    if guarantee == "AtMostOnce":
        assert "a" not in [t.identity for t in taken]
        assert (await ledger.counts())["unknown"] == 1


async def test_a_late_sent_from_the_first_holder_still_counts(client: aioredis.Redis) -> None:
    ledger = make(client, lease_ms=300)
    await seeded(ledger, "a")
    [item] = await ledger.claim(10)
    await ledger.mark(item, ledger.lane())
    await asyncio.sleep(0.4)
    await ledger.claim(10)  # takeover: a becomes unknown
    assert await ledger.record(Record(item, "sent")) == "sent"
    counts = await ledger.counts()
    assert (counts["sent"], counts["unknown"], counts["pending"]) == (1, 0, 0)


async def test_unknown_is_terminal_under_at_most_once(client: aioredis.Redis) -> None:
    ledger = make(client)
    await seeded(ledger, "a")
    [item] = await ledger.claim(10)
    await ledger.mark(item, ledger.lane())
    assert await ledger.record(Record(item, "unknown", "after data: timeout")) == "unknown"
    assert await ledger.claim(10) == []
    assert not await ledger.unfinished()


async def test_at_least_once_retries_unknown_up_to_max_attempts(client: aioredis.Redis) -> None:
    ledger = make(client, guarantee="AtLeastOnce", max_attempts=2)
    await seeded(ledger, "a")
    for expected in ("pending", "unknown"):
        [item] = await ledger.claim(10)
        assert (await ledger.mark(item, ledger.lane()))[0] == "ok"
        assert await ledger.record(Record(item, "unknown", "after data: timeout")) == expected
    assert (await ledger.entry("a"))["a"] == 2


async def test_temporary_refusals_use_attempts_then_fail(client: aioredis.Redis) -> None:
    ledger = make(client, max_attempts=2)
    await seeded(ledger, "a")
    states = []
    for _ in range(2):
        [item] = await ledger.claim(10)
        states.append(await ledger.record(Record(item, "retry", "451 busy", uses_attempt=True)))
    assert states == ["pending", "failed"]
    assert (await ledger.entry("a"))["r"] == "out of attempts: 451 busy"


async def test_a_relay_outage_uses_no_attempt(client: aioredis.Redis) -> None:
    ledger = make(client, max_attempts=1)
    await seeded(ledger, "a")
    for _ in range(3):
        [item] = await ledger.claim(10)
        assert await ledger.record(Record(item, "release", "relay: refused")) == "pending"
    assert (await ledger.entry("a"))["a"] == 0


async def test_a_sent_recipient_is_never_marked_again(client: aioredis.Redis) -> None:
    ledger = make(client)
    await seeded(ledger, "a")
    [item] = await ledger.claim(10)
    await ledger.mark(item, ledger.lane())
    await ledger.record(Record(item, "sent"))
    await seeded(ledger, "a")  # a new seeding of the same audience version adds nothing
    assert await ledger.claim(10) == []
    assert (await ledger.counts())["sent"] == 1


async def test_the_previous_outcome_and_the_next_mark_share_one_call(
    client: aioredis.Redis
) -> None:
    ledger = make(client)
    await seeded(ledger, "a", "b")
    first, second = await ledger.claim(10)
    assert (await ledger.mark(first, ledger.lane()))[0] == "ok"
    assert await ledger.mark(second, ledger.lane(), Record(first, "sent")) == ("ok", "1", "sent")
    assert (await ledger.entry("a"))["s"] == "sent"
    assert (await ledger.entry("b"))["s"] == "handing"


async def test_marks_count_handovers_and_stop_when_the_ledger_is_not_the_checked_one(
    client: aioredis.Redis
) -> None:
    ledger = make(client)
    await seeded(ledger, "a", "b", "c")
    a, b, c = await ledger.claim(10)
    assert (await ledger.mark(a, ledger.lane()))[0] == "ok"
    assert (await ledger.mark(b, ledger.lane(), Record(a, "sent")))[0] == "ok"
    assert await client.hget(KEYS.identity, "handovers") == b"2"
    await client.hset(KEYS.identity, "handovers", 1)  # an older copy restored under the run
    assert await ledger.mark(c, ledger.lane()) == ("stopped", "LedgerLost", None)
    assert not await ledger.still_ours()
    await client.hset(KEYS.identity, mapping={"handovers": 2, "id": "another"})
    assert await ledger.mark(c, ledger.lane()) == ("stopped", "LedgerLost", None)
    await client.delete(KEYS.identity)  # Redis lost it
    assert (await ledger.mark(c, ledger.lane()))[:2] == ("stopped", "LedgerLost")
    assert (await ledger.entry("c"))["s"] == "pending"


async def test_a_lane_refuses_when_its_own_marks_were_rewound(client: aioredis.Redis) -> None:
    ledger = make(client)
    await seeded(ledger, "a", "b", "c")
    a, b, c = await ledger.claim(10)
    lane = ledger.lane()
    assert (await ledger.mark(a, lane))[0] == "ok"
    copy = await client.dump(KEYS.identity)  # a snapshot taken after a, before b
    assert (await ledger.mark(b, lane, Record(a, "sent")))[0] == "ok"
    await client.restore(KEYS.identity, 0, copy, replace=True)
    await client.hincrby(KEYS.identity, "handovers", 5)  # other pods push the counter past
    assert await ledger.mark(c, lane) == ("stopped", "LedgerLost", None)
    assert await ledger.mark(c, ledger.lane()) != ("stopped", "LedgerLost", None)  # a new lane
