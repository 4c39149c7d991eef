"""The sample audience: committed as generated, and as varied as the demo promises."""

from __future__ import annotations

import yaml

from herald_api.models import Audience
from herald_dev import samples
from herald_jobs.audience import AudienceReader


def test_the_committed_sample_audience_is_the_generated_one() -> None:
    hint = "manifests/samples/recipients.yaml is stale: run python -m herald_dev.samples"
    assert samples.PATH.read_text() == samples.configmap_yaml(), hint


def test_the_sample_audience_has_repeats_invalid_addresses_and_both_languages() -> None:
    data = yaml.safe_load(samples.PATH.read_text())["data"][samples.KEY]
    audience = Audience.model_validate(
        {"configMaps": [{"name": samples.CONFIGMAP, "key": samples.KEY}]})
    people = list(AudienceReader(audience, [data], []))
    assert len(people) == samples.COUNT
    identities = [p.identity for p in people if not p.invalid]
    repeats = len(identities) - len(set(identities))
    invalid = {p.identity for p in people if p.invalid}
    print(f"{repeats} repeated, {len(invalid)} invalid")
    assert 50 <= repeats <= 200
    assert len(invalid) == len(samples.INVALID)
    assert {p.vars["lang"] for p in people} == {"ko", "en"}
    assert any(p.address.endswith("@xn--vv4b11d.kr") for p in people)  # 예시.kr, IDNA-encoded
    spaced = [line for line in data.splitlines() if line.startswith(" ")]
    assert spaced and all(p.address == p.address.strip() for p in people)
