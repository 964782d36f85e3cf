"""Contact normalisation: the stored forms, and the keys leads are de-duplicated on."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

_NON_DIGITS = re.compile(r"\D+")
# Both checks are pure and cost tens of microseconds; CRM syncs re-send the same contacts (every
# merge does), so the last results are kept. Failures are not cached.
_CACHED = 65_536


class ContactError(ValueError):
    pass


@lru_cache(maxsize=_CACHED)
def normalize_email(raw: str) -> tuple[str, str]:
    """-> (stored form, de-dup key). The key is the whole address lower-cased."""
    try:
        # Syntax only (no DNS at request time); `.test` addresses are allowed for integrations
        # that exercise the API with test data.
        result = validate_email(raw, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ContactError(f"contact_email is not a valid email address: {exc}") from None
    return result.normalized, result.normalized.lower()


@lru_cache(maxsize=_CACHED)
def normalize_phone(raw: str, default_region: str) -> tuple[str, str]:
    """-> (E.164, last 10 digits). A number without a country code is read in `default_region`."""
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
