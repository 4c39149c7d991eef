"""Which recipient gets which fault from the tests' SMTP server."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald_dev.smtpserver import CaptureHandler


@pytest.fixture
def handler(tmp_path: Path) -> CaptureHandler:
    return CaptureHandler(tmp_path, faults=True, stall_seconds=1)


@pytest.mark.parametrize(("stage", "rcpt", "code"), [
    ("rcpt", "rcpt-451-x@example.com", "451"),
    ("rcpt", "RCPT-550@example.com", "550"),
    ("data", "data-554-x@example.com", "554"),
    ("data", "rcpt-451-x@example.com", None),   # a RCPT fault leaves the data alone
    ("rcpt", "user1@example.com", None),
    ("rcpt", "someone@rcpt-451.example.com", None),  # the domain does not count
])
def test_the_local_part_picks_the_fault(
    handler: CaptureHandler, stage: str, rcpt: str, code: str | None
) -> None:
    assert handler._fault(stage, rcpt) == code


def test_once_faults_only_the_first_try_of_each_recipient(handler: CaptureHandler) -> None:
    assert handler._fault("rcpt", "rcpt-451-once-a@example.com") == "451"
    assert handler._fault("rcpt", "rcpt-451-once-b@example.com") == "451"
    assert handler._fault("rcpt", "RCPT-451-once-a@example.com") is None
    assert handler._fault("rcpt", "rcpt-451-once-a@example.com") is None


def test_without_faults_everyone_is_accepted(tmp_path: Path) -> None:
    plain = CaptureHandler(tmp_path, faults=False, stall_seconds=1)
    assert plain._fault("rcpt", "rcpt-550@example.com") is None
