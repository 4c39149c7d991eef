"""Messages: templates rendered per recipient into ready-to-send bytes.

Building an `email.message.EmailMessage` per message costs more than sending it, so the
parts every message shares (From, Reply-To, extra headers, MIME structure) are encoded once
per run, and each message only adds its own To, Subject, Message-ID and body. Header values
are RFC 2047-encoded and stripped of CR/LF, so nothing a variable holds can add a header or
a recipient; bodies are base64, so no line of theirs can end the SMTP data early.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import secrets
from dataclasses import dataclass
from email.header import Header
from email.headerregistry import Address

import idna
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from herald_api.models import Message

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RenderError(ValueError):
    """A recipient's message cannot be made; the reason is shown in its ledger entry."""


def one_line(value: str) -> str:
    """Every kind of line break (CR, LF, NEL, LS, PS, …) and control character as a space."""
    return _CONTROL.sub(" ", " ".join(value.splitlines()))


def header_value(value: str) -> str:
    """One logical line, RFC 2047-encoded (and so folded into short lines) unless it is
    short plain ASCII; SMTP servers refuse lines over 998 characters."""
    flat = one_line(value).strip()
    if flat.isascii() and len(flat) <= 900:
        return flat
    return Header(flat, "utf-8").encode(linesep="\r\n", maxlinelen=76)


def address_header(value: str) -> str:
    """A From/Reply-To/To value with its display name encoded when needed."""
    name, addr = email.utils.parseaddr(one_line(value))
    addr = ascii_address(addr)
    if not name:
        return addr
    return email.utils.formataddr((name, addr), charset="utf-8")


def ascii_address(addr: str) -> str:
    """The address with its domain IDNA-encoded (what SMTP and headers can carry)."""
    local, _, domain = addr.rpartition("@")
    if not local or not domain:
        raise RenderError(f"not an address: {addr!r}")
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except (idna.IDNAError, UnicodeError) as err:
        raise RenderError(f"not an address: {addr!r}: {err}") from err


def message_id(namespace: str, name: str, dedupe_key: str, identity: str, domain: str) -> str:
    """The same for every copy of one round's message to one person."""
    digest = hashlib.sha256(f"{namespace}/{name}/{dedupe_key}/{identity}".encode()).hexdigest()
    return f"<{digest[:40]}@{domain}>"


def _b64(text: str) -> bytes:
    return base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Rendered:
    envelope_from: str
    data: bytes


class MessageFactory:
    """Everything fixed about a round's message, compiled once."""

    def __init__(self, message: Message, namespace: str, name: str, dedupe_key: str) -> None:
        env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        html_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
        self.subject = env.from_string(message.subject)
        self.text = env.from_string(message.text) if message.text is not None else None
        self.html = html_env.from_string(message.html) if message.html is not None else None
        self.vars = dict(message.vars)
        self.namespace, self.name, self.dedupe_key = namespace, name, dedupe_key
        sender = ascii_address(email.utils.parseaddr(message.from_)[1])
        self.envelope_from = sender
        self.domain = sender.rpartition("@")[2] or "herald.invalid"
        fixed = [f"From: {address_header(message.from_)}"]
        if message.reply_to:
            fixed.append(f"Reply-To: {address_header(message.reply_to)}")
        fixed.append(f"Date: {email.utils.formatdate(localtime=False)}")
        fixed.append("MIME-Version: 1.0")
        fixed += [f"{k}: {header_value(v)}" for k, v in message.headers.items()]
        self.fixed_headers = ("\r\n".join(fixed) + "\r\n").encode("ascii")
        self.boundary = f"herald-{secrets.token_hex(12)}"

    def render(self, identity: str, address: str, variables: dict[str, str]) -> Rendered:
        context = {**self.vars, **variables}
        try:
            subject = self.subject.render(context)
            text = self.text.render(context) if self.text else None
            html = self.html.render(context) if self.html else None
        except TemplateError as err:
            raise RenderError(f"template: {err.message or err}") from err
        except (ArithmeticError, LookupError, TypeError, ValueError, AssertionError,
                RecursionError, MemoryError) as err:  # a template's own runtime error
            raise RenderError(f"template: {type(err).__name__}: {err}") from err
        to = str(Address(addr_spec=address))
        mid = message_id(self.namespace, self.name, self.dedupe_key, identity, self.domain)
        head = (f"To: {to}\r\nSubject: {header_value(subject)}\r\nMessage-ID: {mid}\r\n"
                ).encode("ascii")
        return Rendered(self.envelope_from, self.fixed_headers + head + self._body(text, html))

    def _body(self, text: str | None, html: str | None) -> bytes:
        def part(kind: str, content: str) -> bytes:
            return (f"Content-Type: text/{kind}; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n").encode() + _b64(content)

        if text is not None and html is not None:
            b = self.boundary.encode()
            return (b'Content-Type: multipart/alternative; boundary="' + b + b'"\r\n\r\n'
                    + b"--" + b + b"\r\n" + part("plain", text)
                    + b"--" + b + b"\r\n" + part("html", html)
                    + b"--" + b + b"--\r\n")
        if html is not None:
            return part("html", html)
        return part("plain", text or "")
