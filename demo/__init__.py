"""The demo: the whole outbox flow on one machine (``python -m demo``, ``make demo``).

Not part of the library. ``stack`` starts and stops the sidecar and the workers,
``database`` makes the demo's own database, ``traffic`` is the application and the chat
client, ``flow`` runs one round of traffic, ``report`` draws progress and the summary,
``stopping`` turns stop signals into a flag that start-up and the flow check.
"""
