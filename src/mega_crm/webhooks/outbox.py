"""The transactional outbox: lead.created events written in the lead's own transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session


def record_lead_created(session: Session, customer_id: uuid.UUID, lead: dict[str, Any]) -> None:
    """Called by createLead in the transaction that inserted a genuinely new lead.

    Webhook delivery is not built yet: nothing to record.
    """
    return None
