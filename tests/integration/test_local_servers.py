"""Redis and the SMTP servers the tests use are real, and each fault is what it says."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis

from tests.conftest import Mailbox, wait_for


def message(to: str, subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Notices <no-reply@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}@herald.test>"
    msg.set_content("Hello.\n")
    return msg


def test_redis_round_trip_with_ledger_durability(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.set("herald:smoke", "1")
    assert r.get("herald:smoke") == "1"
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("appendfsync") == {"appendfsync": "always"}
    assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def test_capture_server_keeps_each_message_as_an_eml_file(capture: Mailbox) -> None:
    with smtplib.SMTP("127.0.0.1", capture.port, timeout=10) as smtp:
        smtp.send_message(message("user1@example.com", "one"), to_addrs=["user1@example.com"])
    [received] = capture.messages()
    assert received["Subject"] == "one"
    [entry] = capture.journal()
    assert entry["rcpt_tos"] == ["user1@example.com"]
    assert entry["outcome"] == "accepted"


def test_smtp_sink_accepts_a_message(smtp_sink: int) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_sink, timeout=10) as smtp:
        refused = smtp.send_message(message("load@example.com"), to_addrs=["load@example.com"])
    assert refused == {}


def test_fault_rcpt_451_once_then_accepted(fault_smtp: Mailbox) -> None:
    rcpt = "rcpt-451-once-a@example.com"
    with smtplib.SMTP("127.0.0.1", fault_smtp.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.send_message(message(rcpt, "first"), to_addrs=[rcpt])
        assert refused.value.recipients[rcpt][0] == 451
        smtp.rset()
        smtp.send_message(message(rcpt, "second"), to_addrs=[rcpt])
    assert [m["Subject"] for m in fault_smtp.messages()] == ["second"]


def test_fault_rcpt_550_refuses_the_recipient(fault_smtp: Mailbox) -> None:
    rcpt = "rcpt-550-a@example.com"
    with smtplib.SMTP("127.0.0.1", fault_smtp.port, timeout=10) as smtp, \
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp.send_message(message(rcpt), to_addrs=[rcpt])
    assert refused.value.recipients[rcpt][0] == 550
    assert fault_smtp.messages() == []


@pytest.mark.parametrize("code", [451, 550])
def test_fault_data_reply_after_the_data(fault_smtp: Mailbox, code: int) -> None:
    rcpt = f"data-{code}-a@example.com"
    with smtplib.SMTP("127.0.0.1", fault_smtp.port, timeout=10) as smtp, \
            pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.send_message(message(rcpt), to_addrs=[rcpt])
    assert refused.value.smtp_code == code
    assert fault_smtp.messages() == []
    assert [e["outcome"] for e in fault_smtp.journal()] == [f"rejected {code}"]


def test_fault_stall_after_data_times_out_the_client(fault_smtp: Mailbox) -> None:
    rcpt = "stall-after-data-a@example.com"
    smtp = smtplib.SMTP("127.0.0.1", fault_smtp.port, timeout=2)
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        smtp.send_message(message(rcpt), to_addrs=[rcpt])
    smtp.close()
    # The server has the message although the client never heard so: the incident.
    assert len(fault_smtp.messages()) == 1
    assert [e["outcome"] for e in fault_smtp.journal()] == ["stalled"]


def test_fault_drop_after_data_disconnects_without_a_reply(fault_smtp: Mailbox) -> None:
    rcpt = "drop-after-data-a@example.com"
    with smtplib.SMTP("127.0.0.1", fault_smtp.port, timeout=10) as smtp, \
            pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.send_message(message(rcpt), to_addrs=[rcpt])
    assert len(fault_smtp.messages()) == 1
    assert [e["outcome"] for e in fault_smtp.journal()] == ["dropped"]


def test_servers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    """A test run killed with SIGKILL leaves no server behind (smtp-sink included, which
    changes its user as root, and so would lose a parent-death signal set before)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from herald_dev.servers import capture_service, smtp_sink_service\n"
        "from herald_dev.services import free_port, start_all\n"
        "d = Path(sys.argv[1])\n"
        "services = [smtp_sink_service(d / 'sink', free_port()),\n"
        "            capture_service(d / 'capture', free_port(), d / 'mail')]\n"
        "start_all(services, attached=True)\n"
        "print(' '.join(str(s.pid()) for s in services), flush=True)\n"
        "import time; time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]  # type: ignore[union-attr]
    assert len(pids) == 2 and all(Path(f"/proc/{p}").exists() for p in pids)
    parent.kill()
    parent.wait()

    def gone(pid: int) -> bool:
        status = Path(f"/proc/{pid}/status")
        return not status.exists() or "zombie" in status.read_text()

    wait_for(lambda: all(gone(p) for p in pids), timeout=10, interval=0.1)
