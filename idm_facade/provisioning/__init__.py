"""Provisioning out: pushing accounts and groups to IT systems' own SCIM endpoints.

:mod:`targets` reads ``[[provisioning.target]]``; :mod:`desired` works out, from one
snapshot as a target's policy sees it, what the target should hold; :mod:`client` speaks
SCIM to the target; :mod:`outbox` plans the deliveries into the store's outbox and sends
them, with retries; :mod:`reconcile` compares a target with what it should hold.
"""
