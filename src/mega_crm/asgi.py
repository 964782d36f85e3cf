"""ASGI entry point for process managers: `uvicorn mega_crm.asgi:app`."""

from mega_crm.app import create_app

app = create_app()
