"""Audience parsing: CSV and JSON lines, trimming, IDNA, case-folded identity."""

from __future__ import annotations

import pytest

from herald_api.models import Audience
from herald_jobs.audience import AudienceError, AudienceReader, Source, normalize, rows


@pytest.mark.parametrize(("raw", "address", "reason"), [
    ("  user1@example.com ", "user1@example.com", ""),
    ("User.One+tag@Example.COM", "User.One+tag@example.com", ""),
    ("kim@bücher.example", "kim@xn--bcher-kva.example", ""),
    ("홍길동@example.com", "홍길동@example.com", "local part is not a plain ASCII dot-atom"),
    ("no-at-sign", "no-at-sign", "not an email address"),
    ("@example.com", "@example.com", "not an email address"),
    ("a..b@example.com", "a..b@example.com", "local part is not a plain ASCII dot-atom"),
    ("a b@example.com", "a b@example.com", "local part is not a plain ASCII dot-atom"),
    ("user@exa mple.com", "user@exa mple.com", "domain is not valid"),
    ("zed@example.com\u3002", "zed@example.com", ""),  # a full-width trailing dot
    ("victim\n@example.com", "victim\n@example.com", "local part is not a plain ASCII"),
    ("x" * 65 + "@example.com", "x" * 65 + "@example.com", "local part is longer than 64"),
])
def test_normalize(raw: str, address: str, reason: str) -> None:
    got_address, got_reason = normalize(raw)
    assert got_address == address
    assert got_reason.startswith(reason) if reason else got_reason == ""


def test_csv_columns_become_variables() -> None:
    data = "email,name,plan\nuser1@example.com,User One,gold\n"
    [r] = list(rows(Source("spec.audience.configMaps[0]", data), "recipients.csv"))
    assert (r.identity, r.address, r.vars) == (
        "user1@example.com", "user1@example.com", {"name": "User One", "plan": "gold"})


def test_jsonl_keys_become_variables() -> None:
    data = '{"email": "User1@Example.com", "name": "Ann", "n": 3}\n\n'
    [r] = list(rows(Source("spec.audience.secrets[0]", data), "list.jsonl"))
    assert (r.identity, r.address, r.vars) == (
        "user1@example.com", "User1@example.com", {"name": "Ann", "n": "3"})


def test_a_byte_order_mark_does_not_hide_the_email_column() -> None:
    [r] = list(rows(Source("f", "\ufeffemail\nuser1@example.com\n"), "r.csv"))
    assert r.identity == "user1@example.com"


@pytest.mark.parametrize(("data", "key", "complaint"), [
    ("email,email\na@example.com,b@example.com\n", "r.csv",
     "spec.audience.configMaps[0]: CSV header names a column twice"),
    ("email\n" + "x" * 200_000 + "\n", "r.csv", "spec.audience.configMaps[0]: CSV line"),
    ("[" * 100_000 + "\n", "r.jsonl", "spec.audience.configMaps[0]: line 1 is"),
    ("mail,name\nx@example.com,X\n", "r.csv", "spec.audience.configMaps[0]: CSV has no 'email'"),
    ('{"email": "a@example.com"}\nnot json\n', "r.jsonl",
     "spec.audience.configMaps[0]: line 2 is not JSON"),
    ('{"name": "no email"}\n', "r.jsonl", "spec.audience.configMaps[0]: line 1 has no 'email'"),
])
def test_unreadable_sources_name_the_field(data: str, key: str, complaint: str) -> None:
    with pytest.raises(AudienceError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        list(rows(Source("spec.audience.configMaps[0]", data), key))


def test_sources_are_read_in_order_and_the_version_follows_the_data() -> None:
    audience = Audience.model_validate({
        "inline": [{"email": "a@example.com"}],
        "configMaps": [{"name": "r", "key": "r.csv"}],
        "secrets": [{"name": "s", "key": "s.jsonl"}]})
    reader = AudienceReader(audience, ["email\nb@example.com\n"], ['{"email": "c@example.com"}'])
    assert [r.identity for r in reader] == ["a@example.com", "b@example.com", "c@example.com"]
    changed = AudienceReader(audience, ["email\nb@example.com\nd@example.com\n"],
                             ['{"email": "c@example.com"}'])
    assert reader.version() != changed.version()
    assert reader.version() == AudienceReader(audience, ["email\nb@example.com\n"],
                                              ['{"email": "c@example.com"}']).version()
