"""The pull change feed: ``GET /feed/{name}`` for consumers that poll (``[[provisioning.feed]]``;
the events are planned by :mod:`idm_facade.provisioning.feed`)."""
