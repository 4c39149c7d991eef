"""ratePerSecond holds across all pods of a campaign (asserted loosely, figure printed)."""

from __future__ import annotations

import pytest

from tests.conftest import Mailbox
from tests.integration.conftest import Delivery, csv_audience


@pytest.mark.timeout(120)
def test_two_pods_together_keep_to_the_campaigns_rate(
    delivery: Delivery, capture: Mailbox
) -> None:
    delivery.configmap("recipients", {"recipients.csv": csv_audience(320)})
    delivery.campaign("steady", capture, audience={
        "configMaps": [{"name": "recipients", "key": "recipients.csv"}]},
        delivery={"ratePerSecond": 20, "leaseSeconds": 4, "backoffSeconds": 1})
    pods = [delivery.start("steady") for _ in range(2)]
    assert [p.wait(timeout=100) for p in pods] == [0, 0]
    times = sorted(e["time"] for e in capture.journal())
    assert len(times) == 320
    # Ten seconds in the middle of the run, away from its start and end.
    start = times[0] + 2
    in_ten_seconds = sum(1 for t in times if start <= t < start + 10)
    print(f"{in_ten_seconds} messages in 10 s at ratePerSecond 20 over two pods "
          f"(whole run: {len(times) / (times[-1] - times[0]):.1f}/s)")
    assert 160 <= in_ten_seconds <= 240
