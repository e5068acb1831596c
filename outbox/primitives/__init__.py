"""Small building blocks with no knowledge of the database or the runtime.

Errors, backoff policies, type-prefix rules, message value types, database URLs, defaults and
structured logging. Nothing here imports from :mod:`outbox.storage` or :mod:`outbox.runtime`.
"""
