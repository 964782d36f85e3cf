"""ASGI entry point for process managers: `uvicorn mega_crm.asgi:app` (and `serve --workers N`)."""

from mega_crm.app import create_app
from mega_crm.config import get_settings
from mega_crm.observability.logging import configure_logging

configure_logging(get_settings().log_level, get_settings().log_format)
app = create_app()
