"""Opaque keyset cursors: signed, bound to the sort they were minted under and the customer."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import orjson

from mega_crm.errors import InvalidRequestError
from mega_crm.security import Signer


@dataclass(frozen=True)
class CursorPosition:
    value: datetime | None  # the sort column of the last row (last_interaction_at may be null)
    lead_id: uuid.UUID


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        self._signer = Signer(key, "leads-cursor-v1")

    def encode(self, customer_id: uuid.UUID, sort_by: str, sort_dir: str, position: CursorPosition) -> str:
        payload = {
            "c": customer_id.hex,
            "s": sort_by,
            "d": sort_dir,
            "v": position.value.isoformat() if position.value else None,
            "i": position.lead_id.hex,
        }
        # orjson: the bytes json.dumps(separators=(",", ":")) wrote (ASCII fields), at 1/20 of the CPU
        return self._signer.sign(orjson.dumps(payload))

    def decode(self, token: str, customer_id: uuid.UUID, sort_by: str, sort_dir: str) -> CursorPosition:
        raw = self._signer.unsign(token)
        if raw is None:
            raise InvalidRequestError("cursor is not valid: pass back a next_cursor unchanged.")
        try:
            payload = json.loads(raw)
            owner, sort, direction = payload["c"], payload["s"], payload["d"]
            value = datetime.fromisoformat(payload["v"]) if payload["v"] else None
            lead_id = uuid.UUID(payload["i"])
        except (ValueError, KeyError, TypeError):
            raise InvalidRequestError("cursor is not valid: pass back a next_cursor unchanged.") from None
        if owner != customer_id.hex:
            raise InvalidRequestError("cursor is not valid for this customer.")
        if (sort, direction) != (sort_by, sort_dir):
            raise InvalidRequestError(
                f"cursor was issued for sort_by={sort}&sort_dir={direction}; "
                "use the same sort to continue, or start again without a cursor."
            )
        return CursorPosition(value, lead_id)
