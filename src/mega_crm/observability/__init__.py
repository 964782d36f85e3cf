"""Operating the server: Prometheus metrics, structured logs, request ids."""
