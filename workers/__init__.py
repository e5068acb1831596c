"""Worker processes built on the ``outbox`` runtime: ``workers.chat`` (Redis Pub/Sub)."""
