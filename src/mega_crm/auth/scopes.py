LEADS_READ = "public_api:leads:read"
LEADS_WRITE = "public_api:leads:write"
WEBHOOKS_MANAGE = "public_api:webhooks:manage"
ALL_SCOPES = (LEADS_READ, LEADS_WRITE, WEBHOOKS_MANAGE)
