"""Lead webhooks: registrations, the outbox, signed delivery, and the receivers' helper.

Receivers verify a delivery with `verify_signature(secret, headers, raw_body)`.
"""

from mega_crm.webhooks.signing import verify_signature

__all__ = ["verify_signature"]
