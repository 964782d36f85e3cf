"""The HTTP plumbing every route shares, apart from the routes themselves (leads/endpoints.py,
webhooks/endpoints.py): the app's shared objects (state), how a route runs (pipeline), its
responses, the published OpenAPI and docs, health checks, and the server's connections."""
