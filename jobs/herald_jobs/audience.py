"""Who gets the message: the audience's sources, read as streams of recipients.

Sources are read in the order inline, configMaps, secrets. A source's data is CSV with a
header row that has an `email` column, or JSON lines with an `email` key; every other
column or key becomes a per-recipient variable. Rows are parsed one at a time, never held
as a whole list.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import idna

from herald_api.models import Audience, audience_version

_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


class AudienceError(ValueError):
    """A source that cannot be read at all (the field is named in the message)."""


@dataclass(frozen=True)
class Recipient:
    identity: str  # the case-folded address: two spellings of one address are one recipient
    address: str  # as first spelled, domain IDNA-encoded
    vars: dict[str, str] = field(default_factory=dict)
    invalid: str = ""  # why the address cannot be sent to, if it cannot


@dataclass(frozen=True)
class Source:
    field: str  # e.g. spec.audience.configMaps[0]
    data: str


def normalize(raw: str) -> tuple[str, str]:
    """(address, reason): the address trimmed with its domain IDNA-encoded, or why not."""
    text = raw.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return text, "not an email address"
    if not _LOCAL_PART.fullmatch(local):
        return text, "local part is not a plain ASCII dot-atom"
    if len(local) > 64:
        return text, "local part is longer than 64 characters"
    try:
        # UTS 46 maps full-width dots too, so strip a trailing dot after it as well.
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii").rstrip(".")
    except (idna.IDNAError, UnicodeError) as err:
        return text, f"domain is not valid: {err}"
    if not ascii_domain:
        return text, "domain is empty"
    return f"{local}@{ascii_domain}", ""


def recipient(raw_email: str, variables: dict[str, str]) -> Recipient:
    address, invalid = normalize(raw_email)
    return Recipient(address.casefold(), address, variables, invalid)


def _csv_rows(source: Source) -> Iterator[Recipient]:
    reader = csv.DictReader(io.StringIO(source.data.removeprefix("\ufeff")))
    try:
        header = reader.fieldnames or []
        if "email" not in header:
            raise AudienceError(f"{source.field}: CSV has no 'email' column in its header row "
                                f"(found: {', '.join(map(repr, header[:10])) or 'nothing'})")
        if len(set(header)) != len(header):
            raise AudienceError(f"{source.field}: CSV header names a column twice")
        for row in reader:
            email = row.pop("email") or ""
            yield recipient(email, {k: v or "" for k, v in row.items() if k is not None})
    except csv.Error as err:
        raise AudienceError(f"{source.field}: CSV line {reader.line_num}: {err}") from err


def _jsonl_rows(source: Source) -> Iterator[Recipient]:
    for number, line in enumerate(io.StringIO(source.data), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise AudienceError(f"{source.field}: line {number} is not JSON: {err.msg}") from err
        except RecursionError as err:
            raise AudienceError(f"{source.field}: line {number} is nested too deeply") from err
        if not isinstance(row, dict) or not isinstance(row.get("email"), str):
            raise AudienceError(f"{source.field}: line {number} has no 'email' string")
        email = row.pop("email")
        yield recipient(email, {k: v if isinstance(v, str) else json.dumps(v)
                                for k, v in row.items()})


def rows(source: Source, key: str) -> Iterator[Recipient]:
    """Recipients of one source: JSON lines for .jsonl/.ndjson/.json keys or data that
    starts with `{`, CSV otherwise."""
    is_json = key.endswith((".jsonl", ".ndjson", ".json")) or source.data.lstrip().startswith("{")
    return _jsonl_rows(source) if is_json else _csv_rows(source)


def secret_text(value: str, field: str) -> str:
    """A Secret's data value (base64) as text."""
    try:
        return base64.b64decode(value).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as err:
        raise AudienceError(f"{field}: the Secret's value is not UTF-8 text: {err}") from err


class AudienceReader:
    """The recipients of an audience, given the data of the sources it names."""

    def __init__(self, audience: Audience, config_maps: list[str], secrets: list[str]) -> None:
        self.audience = audience
        self.config_maps = config_maps  # data of each configMaps entry, in order
        self.secrets = secrets  # decoded data of each secrets entry, in order

    def version(self) -> str:
        """A new version means a new seeding (the operator computes the same digest)."""
        return audience_version(self.audience, [*self.config_maps, *self.secrets])

    def __iter__(self) -> Iterator[Recipient]:
        for person in self.audience.inline:
            yield recipient(person.email, dict(person.vars))
        for i, (ref, data) in enumerate(zip(self.audience.config_maps, self.config_maps,
                                            strict=True)):
            yield from rows(Source(f"spec.audience.configMaps[{i}]", data), ref.key)
        for i, (ref, data) in enumerate(zip(self.audience.secrets, self.secrets, strict=True)):
            yield from rows(Source(f"spec.audience.secrets[{i}]", data), ref.key)
