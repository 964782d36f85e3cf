"""The HTTP layer, above the domain packages (leads, webhooks, auth…), which never import it:
the contract's routes (routes/), the app's shared objects (state), how a route runs (pipeline),
its responses, the published OpenAPI and docs, health checks, metrics wiring, and the server's
connections."""
