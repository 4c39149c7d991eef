"""SMTP sending, the only user of aiosmtplib: one session per connection, reused.

aiosmtplib's send_message does MAIL, RCPT and DATA in one call; Herald needs to act
between RCPT and DATA (the ledger's fenced mark) and to know whether the server answered
DATA with 354, after which the outcome of a message is no longer certain. So the steps are
separate calls here, and each failure is classified by the step it happened in.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

import aiosmtplib

from herald_api.models import Smtp


class Outcome(Enum):
    SENT = "sent"  # 2xx after the data
    UNKNOWN = "unknown"  # 354, then no 2xx: it may have been delivered
    RETRY = "retry"  # a definite temporary refusal of this recipient
    FAILED = "failed"  # a permanent refusal of this recipient
    RELAY = "release"  # the relay failed before this recipient was offered
    NOT_MARKED = "not-marked"  # the ledger refused the mark: nothing was handed over


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    reason: str = ""


def _reply(err: aiosmtplib.SMTPResponseException) -> str:
    return f"{err.code} {err.message}".strip()


def _dot_stuffed(data: bytes) -> bytes:
    """The DATA payload: CRLF line endings, dot-stuffed, ending with the lone dot."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) \
        + b"\r\n.\r\n"


class Session:
    """One SMTP connection, opened on first use and after anything left it unusable."""

    def __init__(self, smtp: Smtp, username: str | None, password: str | None) -> None:
        self.config = smtp
        self.username, self.password = username, password
        self.client: aiosmtplib.SMTP | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host, port=c.port, timeout=c.timeout_seconds,
            use_tls=c.security == "TLS", start_tls=c.security == "STARTTLS",
            tls_context=ssl.create_default_context() if c.security != "None" else None)
        await client.connect()
        if self.username is not None:
            await client.login(self.username, self.password or "")
        return client

    def drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await self.client.quit()
            self.drop()

    async def send(self, sender: str, recipient: str, data: bytes,
                   mark: Callable[[], Awaitable[bool]]) -> Result:
        """Offer one message to one envelope recipient; `mark` runs right before DATA."""
        try:
            if self.client is None or not self.client.is_connected:
                self.client = await self._connect()
            await self.client.mail(sender)
        except (aiosmtplib.SMTPException, OSError) as err:
            self.drop()
            return Result(Outcome.RELAY, f"relay: {err}")
        try:
            await self.client.rcpt(recipient)
        except aiosmtplib.SMTPRecipientRefused as err:
            await self._reset()
            return Result(Outcome.FAILED if err.code >= 500 else Outcome.RETRY, _reply(err))
        except (aiosmtplib.SMTPException, OSError) as err:
            self.drop()
            return Result(Outcome.RELAY, f"relay: {err}")
        if not await mark():
            await self._reset()
            return Result(Outcome.NOT_MARKED)
        try:
            start = await self.client.execute_command(b"DATA")
        except (aiosmtplib.SMTPException, OSError) as err:
            # No 354 was read: the data was never sent, so the outcome is definite.
            self.drop()
            return Result(Outcome.RETRY, f"DATA: {err}")
        if start.code != 354:
            await self._reset()
            outcome = Outcome.FAILED if start.code >= 500 else Outcome.RETRY
            return Result(outcome, f"DATA: {start.code} {start.message}")
        # Handed over: from here on, anything but a 2xx leaves the outcome unknown.
        # (execute_command refuses line breaks, so the data goes through the protocol.)
        protocol = self.client.protocol
        try:
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost after 354")
            protocol.write(_dot_stuffed(data))
            reply = await protocol.read_response(timeout=self.config.timeout_seconds)
        except (aiosmtplib.SMTPException, OSError) as err:
            self.drop()
            return Result(Outcome.UNKNOWN, f"after data: {type(err).__name__}: {err}")
        if 200 <= reply.code < 300:
            return Result(Outcome.SENT)
        self.drop()  # never reuse a session whose last message is in doubt
        return Result(Outcome.UNKNOWN, f"after data: {reply.code} {reply.message}")

    async def _reset(self) -> None:
        try:
            if self.client is not None:
                await self.client.rset()
        except (aiosmtplib.SMTPException, OSError):
            self.drop()
