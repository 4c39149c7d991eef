"""The NotificationCampaign resource: the single source of its fields.

The CRD's schema is generated from these models (herald_api.crd), field documentation
included. Rules the API server can check are written twice, on purpose: as CEL in
`cel=` (admission, which names the field to the person running kubectl) and as pydantic
validation here (so the operator and the worker never act on a spec that slipped past an
older CRD). A unit test holds the two to the same cases.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

Day = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
DAYS: tuple[Day, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
RESUME_EVERY = ("1m", "2m", "3m", "4m", "5m", "6m", "10m", "12m", "15m", "20m", "30m", "60m")
Phase = Literal["Pending", "Scheduled", "Running", "Suspended", "Completed", "Invalid", "Halted"]

HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
# No line break of any kind (CR, LF, NEL, LS, PS) nor NUL; `\x{…}` reads the same to the
# API server's Go regexp and pydantic's Rust one.
ONE_LINE = r"^[^\r\n\x{85}\x{2028}\x{2029}\x{0}]*$"
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
# Headers Herald writes itself, or that would change who receives the message.
RESERVED_HEADERS = (
    "to", "cc", "bcc", "from", "sender", "reply-to", "subject", "message-id", "date",
    "mime-version", "return-path",
)
RESERVED_PREFIXES = ("content-", "resent-")


def cel(*rules: tuple[str, str, str | None]) -> dict[str, Any]:
    """x-kubernetes-validations for a schema: (rule, message, fieldPath or None)."""
    out = []
    for rule, message, path in rules:
        entry = {"rule": rule, "message": message}
        if path:
            entry["fieldPath"] = path
        out.append(entry)
    return {"x-kubernetes-validations": out}


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Window(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(
        ("self.start != self.end", "start and end must differ", ".end")))

    days: Annotated[list[Day], Field(
        min_length=1, max_length=7, json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Days a window starts on (Mon..Sun).")]
    start: Annotated[str, Field(pattern=HHMM, description="Local start time, HH:MM.")]
    end: Annotated[str, Field(
        pattern=HHMM,
        description="Local end time, HH:MM, exclusive; earlier than start means the next day.")]

    @model_validator(mode="after")
    def _start_differs_from_end(self) -> Window:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self

    @field_validator("days")
    @classmethod
    def _unique_days(cls, days: list[Day]) -> list[Day]:
        if len(set(days)) != len(days):
            raise ValueError("days must not repeat")
        return days


class Recipient(ApiModel):
    email: Annotated[str, Field(min_length=1, description="The recipient's address.")]
    vars: dict[str, str] = Field(
        default_factory=dict, description="Per-recipient template variables.")


class SourceRef(ApiModel):
    name: Annotated[str, Field(min_length=1, description="Object in the campaign's namespace.")]
    key: Annotated[str, Field(
        min_length=1, description="Data key: CSV with an email column, or JSON lines.")]


class Audience(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel((
        "(has(self.inline) && size(self.inline) > 0) || "
        "(has(self.configMaps) && size(self.configMaps) > 0) || "
        "(has(self.secrets) && size(self.secrets) > 0)",
        "at least one of inline, configMaps or secrets is required", None)))

    inline: list[Recipient] = Field(default_factory=list, description="Recipients listed here.")
    config_maps: list[SourceRef] = Field(
        default_factory=list, description="ConfigMap keys holding recipients.")
    secrets: list[SourceRef] = Field(
        default_factory=list, description="Secret keys holding recipients.")

    @model_validator(mode="after")
    def _has_a_source(self) -> Audience:
        if not (self.inline or self.config_maps or self.secrets):
            raise ValueError("at least one of inline, configMaps or secrets is required")
        return self


class Message(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(
        ("has(self.text) || has(self.html)", "one of text or html is required", None)))

    from_: Annotated[str, Field(
        alias="from", min_length=1, pattern=ONE_LINE, description="The From header.")]
    reply_to: Annotated[str | None, Field(
        default=None, pattern=ONE_LINE, description="The Reply-To header.")]
    subject: Annotated[str, Field(
        min_length=1, pattern=ONE_LINE, description="Jinja2 template of the subject.")]
    text: str | None = Field(default=None, description="Jinja2 template of the plain-text body.")
    html: str | None = Field(default=None, description="Jinja2 template of the HTML body.")
    headers: Annotated[dict[str, Annotated[str, Field(pattern=ONE_LINE, max_length=998)]], Field(
        default_factory=dict, max_length=50,
        description="Extra headers. Names are header tokens; addressing, Subject, Date, "
                    "Message-ID, MIME-Version and Content-* are refused.",
        json_schema_extra=cel(
            ("self.all(k, k.matches('" + HEADER_NAME.replace("'", "\\'") + "'))",
             "header names must be header tokens", None),
            ("self.all(k, !(k.lowerAscii() in " + str(list(RESERVED_HEADERS)) + ") && "
             "!k.lowerAscii().startsWith('content-') && !k.lowerAscii().startsWith('resent-'))",
             "To, Cc, Bcc, From, Sender, Reply-To, Subject, Message-ID, Date, MIME-Version, "
             "Return-Path, Content-* and Resent-* headers are set by Herald and refused here",
             None),
        ))]
    vars: dict[str, str] = Field(default_factory=dict, description="Template variables.")

    @model_validator(mode="after")
    def _has_a_body(self) -> Message:
        if self.text is None and self.html is None:
            raise ValueError("one of text or html is required")
        return self

    @field_validator("from_", "reply_to")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        if value is not None:
            found = email.utils.getaddresses([value])
            if len(found) != 1 or "@" not in found[0][1] or found[0][1].startswith("@"):
                raise ValueError(f"must be exactly one address, as in "
                                 f"'Name <user@example.com>': {value!r}")
        return value

    @field_validator("subject", "text", "html")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                jinja2.Environment().parse(value)
            except jinja2.TemplateSyntaxError as err:
                raise ValueError(f"template syntax, line {err.lineno}: {err.message}") from err
        return value

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if not re.match(HEADER_NAME, name):
                raise ValueError(f"header name {name!r} is not a header token")
            lowered = name.lower()
            if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIXES):
                raise ValueError(f"header {name!r} is set by Herald and refused here")
        return headers


class SecretRef(ApiModel):
    name: Annotated[str, Field(min_length=1)]


class Smtp(ApiModel):
    host: str | None = Field(default=None, min_length=1, description=(
        "SMTP relay host; unset: the install's default relay (its host, port and security)."))
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    security: Literal["STARTTLS", "TLS", "None"] = Field(default="STARTTLS", description=(
        "STARTTLS upgrades a plain session, TLS is TLS from the start, None is plain text."))
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with keys username and password; unset means no AUTH.")
    timeout_seconds: Annotated[int, Field(ge=1, le=600, description=(
        "Longest wait for one SMTP reply; a timeout after DATA is an unknown outcome."))] = 30
    connections: Annotated[int, Field(ge=1, le=100, description="SMTP sessions per pod.")] = 10


class Delivery(ApiModel):
    guarantee: Literal["AtMostOnce", "AtLeastOnce"] = Field(default="AtMostOnce", description=(
        "AtMostOnce never resends a message whose handover was ambiguous (it stays unknown); "
        "AtLeastOnce resends it with the same Message-ID, up to maxAttempts copies."))
    dedupe_key: Annotated[str, Field(
        max_length=128,
        description="Empty: fixed at the first send from a hash of spec.message.")] = ""
    max_attempts: Annotated[int, Field(ge=1, le=10, description=(
        "Attempts per recipient: a temporary failure is retried until then and is then "
        "failed; under AtLeastOnce an unknown outcome too."))] = 3
    backoff_seconds: Annotated[int, Field(ge=1, le=3600, description=(
        "Wait before a recipient's next attempt."))] = 60
    rate_per_second: Annotated[int, Field(
        ge=1, le=10000, description="Across all pods of the campaign.")] = 50
    parallelism: Annotated[int, Field(ge=1, le=50, description="Pods per run.")] = 2
    lease_seconds: Annotated[int, Field(
        ge=1, le=3600, description="At least 2 × smtp.timeoutSeconds.")] = 60


class CampaignSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel((
        "self.delivery.leaseSeconds >= 2 * self.smtp.timeoutSeconds",
        "delivery.leaseSeconds must be at least 2 × smtp.timeoutSeconds",
        ".delivery.leaseSeconds")))

    suspend: bool = Field(default=False, description="Stop delivery now; false resumes.")
    time_zone: str = Field(default="UTC", description="IANA time zone of the windows.")
    windows: list[Window] = Field(
        default_factory=list, max_length=20,
        description="When delivery may happen; none means any time.")
    resume_every: Literal[RESUME_EVERY] = Field(  # type: ignore[valid-type]
        default="15m", description="How soon a run follows one that ended inside a window.")
    audience: Audience = Field(description=(
        "Who gets the message: inline entries, then ConfigMap keys, then Secret keys (CSV with "
        "an email column, or JSON lines); repeats after case-folding are one recipient."))
    message: Message = Field(description=(
        "What is sent: From, subject, a text and/or HTML Jinja2 template, headers, variables."))
    # default {} lets a campaign use the install's default relay (see with_default_relay)
    smtp: Smtp = Field(default_factory=Smtp, json_schema_extra={"default": {}}, description=(
        "The relay messages are handed to; without host, the install's default relay."))
    # default {} lets the API server fill in every delivery default before CEL reads them
    delivery: Delivery = Field(
        default_factory=Delivery, json_schema_extra={"default": {}}, description=(
            "How: the guarantee (AtMostOnce never resends an ambiguous outcome), dedupe key, "
            "attempts, rate across all pods, pods per run, lease."))

    @model_validator(mode="after")
    def _lease_outlives_two_timeouts(self) -> CampaignSpec:
        if self.delivery.lease_seconds < 2 * self.smtp.timeout_seconds:
            raise ValueError("delivery.leaseSeconds must be at least 2 × smtp.timeoutSeconds")
        return self


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class LastRun(ApiModel):
    job: str = ""
    start_time: str | None = None
    completion_time: str | None = None
    sent: int = 0
    result: str = ""


class LedgerRecord(ApiModel):
    id: str = Field(description="The ledger's identity, made when it was created.")
    handovers: int = Field(ge=0, description="Messages handed to SMTP under this ledger.")


class LedgerLoss(ApiModel):
    id: str = Field(description="This loss's id: the value that acknowledges it.")
    reason: str
    detected_at: str
    expected: LedgerRecord = Field(description="The ledger this campaign last wrote to.")
    found: LedgerRecord | None = Field(default=None, description="The ledger Redis has now.")


class CampaignStatus(ApiModel):
    model_config = ConfigDict(frozen=False)

    phase: Phase | None = None
    observed_generation: int | None = None
    dedupe_key: str | None = None
    total: int | None = None
    sent: int | None = None
    failed: int | None = None
    unknown: int | None = None
    pending: int | None = None
    withdrawn: int | None = None
    duplicates_in_audience: int | None = None
    duplicates_prevented: int | None = None
    counts_version: int | None = Field(
        default=None, description="Grows with every change of the counts; writers never "
                                  "replace newer counts with older ones.")
    audience_version: str | None = Field(
        default=None, description="Digest of the audience last added to the ledger.")
    ledger: LedgerRecord | None = Field(
        default=None, description="The ledger this campaign writes to, as last seen.")
    ledger_loss: LedgerLoss | None = Field(
        default=None, description="Set when the ledger is gone or older than `ledger`: "
                                  "nothing is sent until a person acknowledges it.")
    cron_jobs: list[str] = Field(default_factory=list)
    next_window_start: str | None = None
    last_run: LastRun | None = None
    conditions: list[Condition] = Field(default_factory=list)


HALT_NAME = "cluster"


class HaltSpec(ApiModel):
    """The one cluster-wide DeliveryHalt object, named `cluster`."""

    halted: bool = Field(
        default=False, description="True halts every campaign in the cluster; false undoes it.")
    reason: str = Field(default="", max_length=1024, description="Why, for the people paged.")


DEFAULT_RELAY_ENV = ("HERALD_DEFAULT_SMTP_HOST", "HERALD_DEFAULT_SMTP_PORT",
                     "HERALD_DEFAULT_SMTP_SECURITY")


def with_default_relay(smtp: Smtp, environ: Mapping[str, str]) -> Smtp | None:
    """spec.smtp as it is, or, when its host is unset, with the host, port and security of
    the install's default relay (DEFAULT_RELAY_ENV); None when there is neither."""
    if smtp.host:
        return smtp
    host, port, security = (environ.get(name, "") for name in DEFAULT_RELAY_ENV)
    if not host:
        return None
    return Smtp.model_validate({**smtp.model_dump(by_alias=True), "host": host,
                                "port": int(port or 587), "security": security or "STARTTLS"})


def audience_version(audience: Audience, source_data: list[str]) -> str:
    """A digest of everything an audience is made of (its spec and, in order, the text of
    each ConfigMap and Secret key it names): a new one means new work to seed."""
    digest = hashlib.sha256()
    digest.update(json.dumps(audience.model_dump(by_alias=True), sort_keys=True).encode())
    for data in source_data:
        digest.update(b"\0" + data.encode())
    return digest.hexdigest()[:32]


def content_key(message: Message) -> str:
    """The dedupe key a campaign gets at its first send when none is set: a hash of
    spec.message."""
    canonical = json.dumps(message.model_dump(by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
