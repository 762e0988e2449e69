"""The headers every record the gateway writes carries (``spec/reference.md`` 3.4).

Names are str: confluent-kafka would turn a bytes name into ``"b'...'"``.
"""

from __future__ import annotations

from savegress_gw.components import Batch

HEADER_EVENT_ID = "savegress-event-id"
HEADER_OPERATION = "savegress-operation"
HEADER_TABLE = "savegress-table"
HEADER_TIMESTAMP = "savegress-timestamp"
"""Event time in Unix milliseconds, as a decimal string."""


def event_headers(batch: Batch, index: int) -> list[tuple[str, str]]:
    """The four savegress headers of event ``index`` of ``batch``."""
    return [(HEADER_EVENT_ID, batch.ids[index]), (HEADER_OPERATION, batch.operations[index]),
            (HEADER_TABLE, batch.tables[index]), (HEADER_TIMESTAMP, str(batch.timestamps_ms[index]))]
