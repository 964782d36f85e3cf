"""Benchmarks of the MEGA CRM server: `make bench` (= python -m bench)."""
