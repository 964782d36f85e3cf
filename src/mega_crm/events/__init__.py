"""Lead events and the transactional outbox: below both `leads` (which records events in its
write transactions) and `webhooks` (which delivers them), so neither imports the other."""
