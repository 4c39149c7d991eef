"""An SMTP capture server that keeps each accepted message as one .eml file.

Every message whose data arrived is also a line in `journal.jsonl` in the same folder:
time, envelope sender and recipients, Message-ID, what the server did, and the file.

With --faults, the recipient's local part picks a misbehaviour, so a test can aim one
fault at one recipient and leave the others alone:

  rcpt-4xx… / rcpt-5xx…   reply with that code to RCPT TO (e.g. rcpt-451-a@example.com)
  data-4xx… / data-5xx…   take the data, then reply with that code (nothing stored)
  …-once                  as above for the first try of that recipient only, then accept
  stall-after-data…       store the message, then never answer (the 03:30 incident)
  drop-after-data…        store the message, then close the connection without a reply

With --tls-cert/--tls-key it offers STARTTLS and requires it; with --auth USER:PASSWORD it
also requires AUTH (PLAIN or LOGIN) with those credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import signal
import ssl
import time
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_CODED = re.compile(r"^(rcpt|data)-([45]\d\d)(.*)$")
_REPLIES = {
    "421": "421 4.3.0 service closing",
    "450": "450 4.2.0 mailbox busy",
    "451": "451 4.3.0 local error, try again",
    "452": "452 4.3.1 insufficient storage",
    "550": "550 5.1.1 no such mailbox",
    "552": "552 5.3.4 message too big",
    "554": "554 5.7.1 rejected",
}


def _reply(code: str) -> str:
    return _REPLIES.get(code, f"{code} {code[0]}.0.0 injected fault")


class CaptureHandler:
    def __init__(self, outdir: Path, *, faults: bool, stall_seconds: float) -> None:
        self.outdir = outdir
        self.faults = faults
        self.stall_seconds = stall_seconds
        self.seq = itertools.count(1)
        self.tries: dict[tuple[str, str], int] = {}
        self.journal = open(outdir / "journal.jsonl", "a", buffering=1)  # noqa: SIM115

    def _fault(self, stage: str, rcpt: str) -> str | None:
        """The reply code a recipient's local part asks for at this stage, if any."""
        if not self.faults:
            return None
        local = rcpt.split("@", 1)[0].lower()
        match = _CODED.match(local)
        if not match or match.group(1) != stage:
            return None
        if "-once" in match.group(3):
            key = (stage, rcpt.lower())
            self.tries[key] = self.tries.get(key, 0) + 1
            if self.tries[key] > 1:
                return None
        return match.group(2)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        code = self._fault("rcpt", address)
        if code:
            return _reply(code)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _record(self, envelope: Envelope, outcome: str, store: bool) -> None:
        data = envelope.original_content or b""
        name = None
        if store:
            name = f"{time.time_ns()}-{next(self.seq):06d}.eml"
            tmp = self.outdir / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.rename(self.outdir / name)  # readers never see half a file
        headers = BytesHeaderParser().parsebytes(data)
        self.journal.write(json.dumps({
            "time": time.time(),
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "message_id": headers.get("Message-ID"),
            "outcome": outcome,
            "file": name,
        }) + "\n")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        locals_ = [r.split("@", 1)[0].lower() for r in envelope.rcpt_tos]
        if self.faults and any(x.startswith("stall-after-data") for x in locals_):
            self._record(envelope, "stalled", store=True)
            await asyncio.sleep(self.stall_seconds)
            return "250 OK (late)"
        if self.faults and any(x.startswith("drop-after-data") for x in locals_):
            self._record(envelope, "dropped", store=True)
            if isinstance(server.transport, asyncio.Transport):
                server.transport.abort()
            return "421 4.4.2 dropped"
        for rcpt in envelope.rcpt_tos:
            code = self._fault("data", rcpt)
            if code:
                self._record(envelope, f"rejected {code}", store=False)
                return _reply(code)
        self._record(envelope, "accepted", store=True)
        return "250 OK"


async def serve(port: int, outdir: Path, *, faults: bool, stall_seconds: float,
                tls: tuple[str, str] | None = None, auth: str | None = None) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    handler = CaptureHandler(outdir, faults=faults, stall_seconds=stall_seconds)
    loop = asyncio.get_running_loop()
    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    user, _, password = (auth or "").partition(":")

    def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     data: Any) -> AuthResult:
        ok = (isinstance(data, LoginPassword) and data.login.decode() == user
              and data.password.decode() == password)
        return AuthResult(success=ok)

    def factory() -> Any:
        return SMTP(handler, hostname="herald-capture", enable_SMTPUTF8=True,
                    decode_data=False, timeout=300, tls_context=context,
                    require_starttls=bool(context), auth_required=bool(auth),
                    authenticator=authenticate if auth else None)

    server = await loop.create_server(factory, host="127.0.0.1", port=port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"capturing on 127.0.0.1:{port} into {outdir} (faults {'on' if faults else 'off'})",
          flush=True)
    await stop.wait()
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where .eml files go")
    parser.add_argument("--faults", action="store_true", help="honour fault recipients")
    parser.add_argument("--stall-seconds", type=float, default=3600.0)
    parser.add_argument("--tls-cert", help="offer and require STARTTLS with this certificate")
    parser.add_argument("--tls-key", help="the certificate's key")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require AUTH with these")
    args = parser.parse_args(argv)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    asyncio.run(serve(args.port, args.dir, faults=args.faults, stall_seconds=args.stall_seconds,
                      tls=tls, auth=args.auth))


if __name__ == "__main__":
    main()
