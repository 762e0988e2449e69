"""PostgreSQL change data capture building blocks.

``pgoutput`` decodes logical replication messages (protocol version 1), ``types`` turns their
text values into JSON-ready Python values, ``connection`` holds the session settings every
connection (replication and snapshot) uses so both produce identical text, and ``snapshot``
reads the consistent initial snapshot exported by a replication slot.
"""
