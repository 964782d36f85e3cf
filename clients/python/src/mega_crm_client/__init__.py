"""mega_crm_client: a typed Python client of the MEGA Public CRM Lead API.

    from mega_crm_client import MegaClient
    with MegaClient() as client:            # MEGA_API_URL, MEGA_TOKEN, MEGA_CUSTOMER_ID
        lead = client.leads.create(contact_email="ada@example.com")
        for lead in client.leads.iter(status="active"):
            ...

Errors are the tree in `mega_crm_client._exceptions`; webhook receivers use
`mega_crm_client.webhooks` (verify_signature, verify_standard_webhook, parse_event).
"""

from __future__ import annotations

__version__ = "0.1.0"

from mega_crm_client._client import AsyncMegaClient, BulkChunkDone, MegaClient  # noqa: E402
from mega_crm_client._exceptions import (  # noqa: E402
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    InvalidRequestError,
    MegaError,
    NotFoundError,
    RateLimitError,
)
from mega_crm_client._retry import RetryEvent  # noqa: E402
from mega_crm_client._sync_state import FileSyncState, MemorySyncState, SyncState  # noqa: E402
from mega_crm_client._types import (  # noqa: E402
    BulkImportResult,
    BulkRowResult,
    BulkSummary,
    DeliveryPage,
    Lead,
    LeadPage,
    Webhook,
    WebhookDelivery,
    WebhookWithSecret,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncMegaClient",
    "AuthenticationError",
    "AuthorizationError",
    "BulkChunkDone",
    "BulkImportResult",
    "BulkRowResult",
    "BulkSummary",
    "ConflictError",
    "DeliveryPage",
    "FileSyncState",
    "InvalidRequestError",
    "Lead",
    "LeadPage",
    "MegaClient",
    "MegaError",
    "MemorySyncState",
    "NotFoundError",
    "RateLimitError",
    "RetryEvent",
    "SyncState",
    "Webhook",
    "WebhookDelivery",
    "WebhookWithSecret",
    "__version__",
]
