"""The contract's routes, one module per resource: each parses, authorizes and answers through
api.pipeline and leaves the work to its domain package's service (leads/, webhooks/)."""
