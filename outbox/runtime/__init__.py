"""The worker runtime: a process that claims, hands to a :class:`Handler`, acknowledges.

``worker`` (the dispatch loop), ``acknowledger`` (grouped, fenced acks), ``maintenance``
(heartbeat, reaper, gauges), ``health`` (readiness and the transport pause), ``wakeup``
(LISTEN/NOTIFY), ``handler`` (what domain code implements), ``metrics``, ``settings`` and
``runner`` (the process entry point). Builds on :mod:`outbox.storage` and
:mod:`outbox.primitives`; needs the ``worker`` extra (``pip install 'pg-outbox-relay[worker]'``).
"""
