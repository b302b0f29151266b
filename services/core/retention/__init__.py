"""Retention of stored images and outbox artefacts (docs/operations.md, "Retention").

- :mod:`.policy`: what to purge (pure): oldest finished first, never in flight or undelivered;
- :mod:`.survey`: the facts the policy decides on, read from the database and the file system;
- :mod:`.purge`: the crash-safe executor (journal row, files, audit row);
- :mod:`.loop`: the periodic run inside the receiver.
"""
