"""Messages: templates, header safety, encodings, Message-IDs."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from herald_api.models import Message
from herald_jobs.render import MessageFactory, RenderError, message_id


def factory(**fields: object) -> MessageFactory:
    raw = {"from": "Example Notices <no-reply@example.com>", "subject": "Report {{ year }}",
           "text": "Hello {{ name }}", "vars": {"year": "2026", "name": "friend"}, **fields}
    return MessageFactory(Message.model_validate(raw), "notices", "usage", "k1")


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_a_message_has_its_headers_and_body() -> None:
    rendered = factory(replyTo="privacy@example.com", headers={"X-Campaign": "usage"}) \
        .render("user1@example.com", "user1@example.com", {"name": "User One"})
    msg = parse(rendered.data)
    assert rendered.envelope_from == "no-reply@example.com"
    assert msg["From"] == "Example Notices <no-reply@example.com>"
    assert msg["Reply-To"] == "privacy@example.com"
    assert msg["To"] == "user1@example.com"
    assert msg["Subject"] == "Report 2026"
    assert msg["X-Campaign"] == "usage"
    assert msg["Message-ID"] == message_id("notices", "usage", "k1", "user1@example.com",
                                           "example.com")
    assert msg.get_content().strip() == "Hello User One"


def test_utf8_subject_name_and_body_survive() -> None:
    rendered = factory(**{"from": "개인정보팀 <no-reply@example.com>",
                          "subject": "{{ name }}님, 개인정보 이용내역 안내"}) \
        .render("kim@example.com", "kim@example.com", {"name": "김민지"})
    msg = parse(rendered.data)
    assert msg["Subject"] == "김민지님, 개인정보 이용내역 안내"
    assert msg["From"].addresses[0].display_name == "개인정보팀"
    assert msg.get_content().strip() == "Hello 김민지"
    assert rendered.data.isascii()


def test_line_breaks_in_variables_stay_inside_their_header() -> None:
    rendered = factory(subject="Hi {{ name }}").render(
        "a@example.com", "a@example.com", {"name": "Eve\r\nBcc: victim@example.com"})
    msg = parse(rendered.data)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Hi Eve Bcc: victim@example.com"


@pytest.mark.parametrize("brk", ["\n", "\r", "\x85", "\u2028", "\u2029", "\x00", "\x0b"])
def test_no_kind_of_line_break_or_control_character_reaches_a_header(brk: str) -> None:
    rendered = factory(subject="Hi {{ name }}").render(
        "a@example.com", "a@example.com", {"name": f"Eve{brk}Bcc: victim@example.com"})
    head = rendered.data.split(b"\r\n\r\n", 1)[0]
    assert not any(line.startswith(b"Bcc") for line in head.split(b"\r\n"))
    assert b"\x00" not in head


def test_html_variables_are_escaped_and_both_parts_are_sent() -> None:
    msg = parse(factory(html="<p>{{ name }}</p>").render(
        "a@example.com", "a@example.com", {"name": "<script>x</script>"}).data)
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert html.get_content().strip() == "<p>&lt;script&gt;x&lt;/script&gt;</p>"
    assert text.get_content().strip() == "Hello <script>x</script>"


@pytest.mark.parametrize("template", [
    "{{ 1 / 0 }}", "{{ range(200000) | length }}", "{{ '%d' % 'a' }}", "{{ 'x' | wordwrap(0) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
])
def test_a_template_failing_at_run_time_is_a_render_error(template: str) -> None:
    with pytest.raises(RenderError):
        factory(text=template).render("a@example.com", "a@example.com", {})


def test_long_header_values_are_folded_into_short_lines() -> None:
    rendered = factory(subject="{{ long }}", headers={"X-Note": "n" * 998}).render(
        "a@example.com", "a@example.com", {"long": "word " * 300})
    head = rendered.data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    msg = parse(rendered.data)
    assert msg["X-Note"] == "n" * 998
    assert msg["Subject"] == ("word " * 300).strip()


def test_a_non_ascii_sender_domain_is_idna_encoded() -> None:
    rendered = factory(**{"from": "Notices <no-reply@exämple.com>"}).render(
        "a@example.com", "a@example.com", {})
    assert rendered.envelope_from == "no-reply@xn--exmple-cua.com"
    assert rendered.data.isascii()


def test_an_undefined_variable_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="'missing' is undefined"):
        factory(text="{{ missing }}").render("a@example.com", "a@example.com", {})


def test_the_sandbox_refuses_unsafe_templates() -> None:
    with pytest.raises(RenderError):
        factory(text="{{ name.__class__.__mro__ }}").render("a@example.com", "a@example.com", {})


def test_message_ids_are_stable_per_round_and_recipient() -> None:
    one = message_id("ns", "c", "k1", "a@example.com", "example.com")
    assert one == message_id("ns", "c", "k1", "a@example.com", "example.com")
    assert one != message_id("ns", "c", "k2", "a@example.com", "example.com")
    assert one != message_id("ns", "c", "k1", "b@example.com", "example.com")
