"""Contact normalisation: the stored forms, and the keys leads are de-duplicated on.

email-validator and phonenumbers decide what is valid. Each costs 15-20 µs a call, most of a bulk
import's time, so the two shapes nearly every lead arrives in take a fast path first: a plain ASCII
address, and a North American number written as E.164 or in the US's own formats. A fast path
accepts only what its library accepts and returns exactly what the library returns
(tests/leads/test_normalize.py checks both against the libraries on generated inputs); anything
else, errors included, goes to the library.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

_NON_DIGITS = re.compile(r"\D+")
# Both checks are pure; CRM syncs re-send the same contacts (every merge does), so the last
# results are kept. Failures are not cached.
_CACHED = 65_536


class ContactError(ValueError):
    pass


# A dot-atom local part of letters, digits and _ % + -, then a hostname of letter/digit labels with
# single inner hyphens and an alphabetic top-level domain. At most 64 characters, so that no length
# rule of the address, its local part, domain or labels can apply.
_PLAIN_EMAIL = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@((?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\.)+[A-Za-z]{2,63})"
)
_PLAIN_EMAIL_MAX = 64
# `.test` is allowed (test_environment=True below); the other special-use domains are refused.
_SPECIAL_USE = frozenset(d for d in SPECIAL_USE_DOMAIN_NAMES if d != "test")
_SPECIAL_USE_SUFFIXES = tuple("." + d for d in _SPECIAL_USE)
# RFC 2142 mailboxes (info@, sales@, www@ …), whose local part the library lower-cases.
_CASE_INSENSITIVE_LOCAL = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


@lru_cache(maxsize=_CACHED)
def normalize_email(raw: str) -> tuple[str, str]:
    """-> (stored form, de-dup key). The key is the whole address lower-cased."""
    plain = _PLAIN_EMAIL.fullmatch(raw) if len(raw) <= _PLAIN_EMAIL_MAX else None
    if plain is not None and raw[: plain.start(1) - 1].lower() not in _CASE_INSENSITIVE_LOCAL:
        domain = plain.group(1).lower()
        if domain not in _SPECIAL_USE and not domain.endswith(_SPECIAL_USE_SUFFIXES):
            address = raw[: plain.start(1)] + domain  # the library keeps the local part's case
            return address, address.lower()
    try:
        # Syntax only (no DNS at request time); `.test` addresses are allowed for integrations
        # that exercise the API with test data.
        result = validate_email(raw, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ContactError(f"contact_email is not a valid email address: {exc}") from None
    return result.normalized, result.normalized.lower()


# A North American (+1) number: area code and exchange each start with 2-9. As E.164 in any region,
# or, in the US, as ten digits with the usual separators: (206) 555-0123, 206-555-0123, 206.555.0123.
_NANP_E164 = re.compile(r"\+1([2-9][0-9]{2}[2-9][0-9]{6})")
_NANP_US = re.compile(r"(?:\(([2-9][0-9]{2})\) ?|([2-9][0-9]{2})[ .-]?)([2-9][0-9]{2})[ .-]?([0-9]{4})")


@lru_cache(maxsize=_CACHED)
def normalize_phone(raw: str, default_region: str) -> tuple[str, str]:
    """-> (E.164, last 10 digits). A number without a country code is read in `default_region`."""
    if (plain := _NANP_E164.fullmatch(raw)) is not None:
        return raw, plain.group(1)
    if default_region == "US" and (us := _NANP_US.fullmatch(raw)) is not None:
        national = (us.group(1) or us.group(2)) + us.group(3) + us.group(4)
        return "+1" + national, national
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise ContactError("contact_phone is not a phone number.") from None
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise ContactError(
            "contact_phone is not a complete phone number (include the area code, "
            "or a +country code for numbers outside the default region)."
        )
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, phone_key(e164)


def phone_key(value: str) -> str:
    """The last 10 digits: how phones match whatever their format."""
    return digits_of(value)[-10:]


def digits_of(value: str) -> str:
    return _NON_DIGITS.sub("", value)
