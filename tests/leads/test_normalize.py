"""The contact fast paths in mega_crm.leads.normalize agree with email-validator and phonenumbers:
whatever the libraries refuse is refused, and whatever they accept is stored exactly as they
would store it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mega_crm.leads.normalize import ContactError, normalize_email, normalize_phone, phone_key

# Uncached: every generated input goes through the fast path or the library, not a memo.
email_of = normalize_email.__wrapped__
phone_of = normalize_phone.__wrapped__


def library_email(raw: str) -> tuple[str, str] | None:
    try:
        result = validate_email(raw, check_deliverability=False, test_environment=True)
    except EmailNotValidError:
        return None
    return result.normalized, result.normalized.lower()


def library_phone(raw: str, region: str) -> tuple[str, str] | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, phone_key(e164)


def ours(normalize: Callable[..., Any], *args: Any) -> Any:
    try:
        return normalize(*args)
    except ContactError:
        return None


TLDS = [
    "com",
    "COM",
    "Io",
    "test",
    "local",
    "arpa",
    "onion",
    "invalid",
    "localhost",
    "internal",
    "x",
    "c0m",
    "a1",
]
emails = st.one_of(
    st.from_regex(
        r"\A[A-Za-z0-9_%+.'\-]{1,24}@(?:[A-Za-z0-9\-]{1,12}\.){0,3}[A-Za-z0-9\-]{0,12}\.("
        + "|".join(TLDS)
        + r")\Z"
    ),
    st.from_regex(r"\A[A-Za-z0-9_%+\-]{1,40}(\.[A-Za-z0-9_%+\-]{1,10}){0,3}@[a-z0-9\-]{1,63}\.com\Z"),
    st.text(alphabet="aZ09._%+-@'\" ()[]\\é--", min_size=1, max_size=70),
)


@settings(max_examples=3000, deadline=None)
@given(emails)
@example("Jane.Doe@Example.COM")
@example("WWW@0.com")
@example("Info@Example.com")
@example("jane@foo.test")
@example("jane@mail.local")
@example("jane@a.localhost")
@example("jane@ab--cd.com")
@example("jane@xn--bcher-kva.example")
@example("jane@-x.com")
@example("jane@x-.com")
@example(".jane@x.com")
@example("ja..ne@x.com")
@example("j" * 60 + "@x.com")
@example("j" * 64 + "@example.com")
@example("jane@" + "a" * 64 + ".com")
@example("jane@x.c")
@example("jane@123.com")
@example("jane@x.123")
def test_email_fast_path_agrees_with_email_validator(raw: str) -> None:
    assert ours(email_of, raw) == library_email(raw)


phones = st.one_of(
    st.from_regex(r"\A\+1[0-9]{10}\Z"),
    st.from_regex(r"\A\+[0-9]{6,14}\Z"),
    st.from_regex(r"\A\(?[0-9]{2,4}\)?[ .\-]{0,2}[0-9]{2,4}[ .\-]{0,2}[0-9]{3,5}\Z"),
    st.from_regex(r"\A1?[ .\-]?\(?[0-9]{3}\)? ?[0-9]{3}[ .\-]?[0-9]{4}\Z"),
    st.text(alphabet="0123456789+() .-x٣", min_size=1, max_size=20),
)


@settings(max_examples=3000, deadline=None)
@given(phones, st.sampled_from(["US", "CA", "GB", "DE"]))
@example("+12065550123", "US")
@example("+12065550123", "GB")
@example("(206) 555-0123", "US")
@example("(206)555-0123", "US")
@example("206.555.0123", "US")
@example("206-555.0123", "US")
@example("2065550123", "GB")
@example("1065550123", "US")
@example("2061550123", "US")
@example("+11065550123", "US")
@example("+1206555012٣", "US")
@example("(206 555-0123", "US")
def test_phone_fast_path_agrees_with_phonenumbers(raw: str, region: str) -> None:
    assert ours(phone_of, raw, region) == library_phone(raw, region)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Jane.Doe@Example.COM", ("Jane.Doe@example.com", "jane.doe@example.com")),
        ("jane@foo.test", ("jane@foo.test", "jane@foo.test")),
    ],
)
def test_email_forms(raw: str, expected: tuple[str, str]) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize("raw", ["jane@mail.local", "jane@x..com", "jane", "jane@localhost"])
def test_bad_emails_are_refused_with_the_library_reason(raw: str) -> None:
    with pytest.raises(ContactError, match="contact_email is not a valid email address: .+"):
        normalize_email(raw)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(206) 555-0123", "US", ("+12065550123", "2065550123")),
        ("+12065550123", "DE", ("+12065550123", "2065550123")),
        ("030 1234567", "DE", ("+49301234567", "9301234567")),
        ("+44 20 7946 0958", "US", ("+442079460958", "2079460958")),
    ],
)
def test_phone_forms(raw: str, region: str, expected: tuple[str, str]) -> None:
    assert normalize_phone(raw, region) == expected
