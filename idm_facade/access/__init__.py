"""Who may read what, and the record of what they read.

``clients``: registered clients, their hashed credentials and the policies attached to them.
``audit``: the append-only, hash-chained access log that every disclosure is written to
before the answer leaves.
"""
