"""Async image jobs: submit, queue, run on idle capacity, progress, cancel, signed
webhooks — durable in the state store (docs/jobs.md)."""
