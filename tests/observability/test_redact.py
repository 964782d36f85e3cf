"""The log redaction rule: whatever text surrounds them, emails, E.164 and North American phone
numbers, API tokens and webhook secrets never survive `redact()` (it guards every log line that
is not a request line, e.g. an exception message quoting SQL parameters)."""

from __future__ import annotations

import secrets

from hypothesis import given
from hypothesis import strategies as st

from mega_crm.observability.logging import redact

surrounding = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30).map(  # type: ignore[arg-type]
    lambda s: s.replace("@", " ")
)
phones = st.one_of(
    st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True),
    st.from_regex(r"\([2-9][0-9]{2}\) ?[0-9]{3}[-. ][0-9]{4}", fullmatch=True),
    st.from_regex(r"[2-9][0-9]{2}[-.][0-9]{3}[-.][0-9]{4}", fullmatch=True),
)
tokens = st.builds(lambda: "mega_" + secrets.token_hex(32)) | st.builds(
    lambda: "mega_whsec_" + secrets.token_urlsafe(32)
)


@given(before=surrounding, secret=st.emails() | phones | tokens, after=surrounding)
def test_redact_removes_contact_details_and_secrets(before: str, secret: str, after: str) -> None:
    out = redact(f"{before} {secret} {after}")
    assert secret not in out
    assert "[redacted]" in out


@given(text=st.from_regex(r"[a-z _/:{}0-9-]{0,40}", fullmatch=True).filter(lambda t: not any(
    c.isdigit() for c in t)))  # fmt: skip
def test_redact_leaves_ordinary_text(text: str) -> None:
    assert redact(text) == text


def test_redact_keeps_ids_and_timestamps() -> None:
    text = "delivery 5d0c6f7e-2a51-4a8e-9a4e-0f1b3c1f4e2a at 2026-11-30T00:12:03Z took 161 ms"
    assert redact(text) == text
