"""Every table, imported in one place for Alembic and create_all."""

from mega_crm.auth.models import ApiKey
from mega_crm.customers.models import Customer, CustomFieldDefinition, Owner, Stage
from mega_crm.db import Base
from mega_crm.idempotency.models import IdempotencyRecord
from mega_crm.leads.models import Lead, LeadCount, LeadDigitGram
from mega_crm.webhooks.models import Webhook, WebhookDelivery, WebhookEvent

__all__ = [
    "ApiKey",
    "Base",
    "CustomFieldDefinition",
    "Customer",
    "IdempotencyRecord",
    "Lead",
    "LeadCount",
    "LeadDigitGram",
    "Owner",
    "Stage",
    "Webhook",
    "WebhookDelivery",
    "WebhookEvent",
]
