"""mega-crm: a self-hostable server for the MEGA Public CRM Lead API."""

__version__ = "0.1.0"
