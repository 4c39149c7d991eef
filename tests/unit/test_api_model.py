"""The campaign model: defaults and bounds of the contract, and the CRD generated from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from herald_api import crd
from herald_api.models import CampaignSpec

ROOT = Path(__file__).resolve().parents[2]


def minimal(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "audience": {"inline": [{"email": "user1@example.com"}]},
        "message": {"from": "no-reply@example.com", "subject": "Notice", "text": "Hello"},
        "smtp": {"host": "smtp.example.com"},
    }
    for path, value in changes.items():
        node = spec
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


def test_committed_crds_are_generated_from_the_model() -> None:
    for name, make in crd.FILES.items():
        committed = (ROOT / "manifests" / "crds" / name).read_text()
        hint = f"{name} is stale: run python -m herald_api.crd manifests/crds"
        assert committed == crd.render(make()), hint


def test_defaults_are_the_contracts() -> None:
    spec = CampaignSpec.model_validate(minimal())
    assert (spec.suspend, spec.time_zone, spec.windows, spec.resume_every) == (
        False, "UTC", [], "15m")
    assert (spec.smtp.port, spec.smtp.security, spec.smtp.timeout_seconds,
            spec.smtp.connections) == (587, "STARTTLS", 30, 10)
    d = spec.delivery
    assert (d.guarantee, d.dedupe_key, d.max_attempts, d.backoff_seconds, d.rate_per_second,
            d.parallelism, d.lease_seconds) == ("AtMostOnce", "", 3, 60, 50, 2, 60)


def schema_defaults(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    found = {}
    if "default" in schema:
        found[path] = schema["default"]
    for name, sub in schema.get("properties", {}).items():
        found.update(schema_defaults(sub, f"{path}.{name}"))
    return found


def test_crd_defaults_agree_with_the_model() -> None:
    schema = crd.campaign_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    defaults = schema_defaults(schema["properties"]["spec"])
    spec = CampaignSpec.model_validate(minimal()).model_dump(by_alias=True)
    for path, value in defaults.items():
        node: Any = spec
        for part in path.strip(".").split("."):
            node = node[part]
        if value == {}:
            continue  # an object defaulted so that its own fields' defaults apply
        assert node == value, path
    assert set(defaults) >= {".suspend", ".timeZone", ".resumeEvery", ".smtp.port",
                             ".smtp.security", ".delivery.leaseSeconds", ".delivery"}


@pytest.mark.parametrize(("changes", "complaint"), [
    ({"windows": [{"days": ["Mon"], "start": "09:00", "end": "09:00"}]}, "start and end"),
    ({"windows": [{"days": [], "start": "09:00", "end": "10:00"}]}, "days"),
    ({"windows": [{"days": ["Mon"], "start": "24:00", "end": "10:00"}]}, "start"),
    ({"windows": [{"days": ["Mon", "Mon"], "start": "09:00", "end": "10:00"}]}, "repeat"),
    ({"windows": [{"days": ["Monday"], "start": "09:00", "end": "10:00"}]}, "days"),
    ({"resume_every": "7m"}, "resume_every"),
    ({"audience": {}}, "at least one of inline"),
    ({"message__text": None}, "one of text or html"),
    ({"message__subject": "a\r\nBcc: x@example.com"}, "subject"),
    ({"message__from": "a@example.com\n"}, "from"),
    ({"message__reply_to": "a@example.com\nX: y"}, "reply_to"),
    ({"message__headers": {"Bcc": "x@example.com"}}, "set by Herald"),
    ({"message__headers": {"Content-Type": "text/plain"}}, "set by Herald"),
    ({"message__headers": {"bad name": "x"}}, "header token"),
    ({"message__headers": {"X-Tag": "a\nBcc: x@example.com"}}, "headers"),
    ({"smtp__port": 0}, "port"),
    ({"smtp__security": "SSL"}, "security"),
    ({"smtp__timeout_seconds": 601}, "timeout_seconds"),
    ({"smtp__connections": 101}, "connections"),
    ({"delivery__guarantee": "ExactlyOnce"}, "guarantee"),
    ({"delivery__dedupe_key": "k" * 129}, "dedupe_key"),
    ({"delivery__max_attempts": 11}, "max_attempts"),
    ({"delivery__rate_per_second": 0}, "rate_per_second"),
    ({"delivery__parallelism": 51}, "parallelism"),
    ({"delivery__lease_seconds": 59}, "leaseSeconds must be at least"),
    ({"unknown_field": 1}, "unknown_field"),
    ({"message__headers": {"Resent-Bcc": "x@example.com"}}, "set by Herald"),
    ({"message__headers": {"Return-Path": "x@example.com"}}, "set by Herald"),
    ({"message__text": "Hello {{ name "}, "template syntax"),
    ({"message__from": "<>"}, "exactly one address"),
    ({"message__from": "a@example.com, evil@example.org"}, "exactly one address"),
    ({"message__reply_to": "not an address"}, "exactly one address"),
])
def test_bad_specs_are_refused_naming_the_field(changes: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as err:
        CampaignSpec.model_validate(minimal(**changes))
    assert complaint.replace("_", "").lower() in str(err.value).replace("_", "").lower()


def test_the_chart_carries_the_same_crds() -> None:
    for path in (ROOT / "manifests" / "crds").glob("*.yaml"):
        chart = ROOT / "charts" / "herald" / "crds" / path.name
        assert chart.read_text() == path.read_text(), f"cp {path} {chart}"
