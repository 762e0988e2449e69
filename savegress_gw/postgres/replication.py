"""The replication connection: START_REPLICATION with pgoutput, reading, and standby feedback.

One :class:`ReplicationStream` owns one psycopg2 ``LogicalReplicationConnection`` and is used by
one thread (reading, decoding and feedback all happen in the source process's loop).

Feedback contract: :meth:`ReplicationStream.confirm` is the only way an LSN is confirmed
explicitly, and the caller passes only the ``end_lsn`` of transactions whose events were all
delivered. psycopg2 (>= 2.8.3) also moves ``flush_lsn`` by itself when a keepalive arrives and
the highest explicitly confirmed LSN is >= the ``data_start`` of the last XLogData it returned
(``pq_read_replication_message``). ``data_start`` is 0 for Relation/Type messages and lies below
confirmed LSNs for the Begin and changes of interleaved transactions, so with complete but
undelivered transactions received, such an advance would confirm them early (data loss after a
restart, reproduced in the research notes §5.4). :meth:`read` therefore stops before calling
``read_message`` whenever that could happen: a complete transaction was received but not
confirmed, and the last message's ``data_start`` is 0 or <= the confirmed LSN. Reading resumes
once the caller has confirmed every received transaction; meanwhile a status update (repeating what was already
confirmed) goes out every 0.25 s so the walsender does not time the connection out. With
nothing pending, the automatic
advance is what keeps an idle slot moving (the server's WAL end never lies past the start of a
commit record not yet sent), so it is left on.
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg2
import psycopg2.extras

from savegress_gw.postgres.pgoutput import lsn_to_str, str_to_lsn

_COMMIT = ord("C")
_ALIVE_INTERVAL_S = 0.25
"""How often a status update is sent while reading waits for deliveries (module docstring)."""


class ReplicationStream:
    """A logical replication stream of one slot and publication."""

    def __init__(self, dsn: str, slot: str, publication: str, status_interval_s: float) -> None:
        self.dsn, self.slot, self.publication = dsn, slot, publication
        self.status_interval_s = max(1.0, status_interval_s)
        self.conn: Any = None
        self.cursor: Any = None
        self.received_end = 0
        """``end_lsn`` of the last complete transaction received (the Commit's ``data_start``)."""
        self.confirmed = 0
        """The highest LSN passed to ``send_feedback`` as ``flush_lsn`` (psycopg2's explicit flush)."""
        self._last_start = 0
        self._last_alive = 0.0
        self.started = False

    # ------------------------------------------------------------------ lifecycle

    def connect(self, connect_timeout_s: float) -> None:
        """Open the replication connection (raises psycopg2 errors for the caller to classify)."""
        self.conn = psycopg2.connect(self.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection,
                                     connect_timeout=max(1, int(connect_timeout_s)))
        self.cursor = self.conn.cursor()

    def create_slot(self, export: bool) -> tuple[int, str | None]:
        """Create the slot on this connection: ``(consistent_point, snapshot_name)``.

        With ``export`` the snapshot stays importable until the next command on this
        connection, so the caller must not use it (not even :meth:`start`) before every snapshot
        reader has imported it.
        """
        mode = "export" if export else "nothing"
        self.cursor.execute(f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput (SNAPSHOT \'{mode}\')')
        _name, point, snapshot, _plugin = self.cursor.fetchone()
        return str_to_lsn(point), snapshot

    def start(self, start_lsn: int) -> None:
        """START_REPLICATION from ``start_lsn`` (0: the slot's confirmed position).

        The server streams transactions committing at or after max(``start_lsn``, the slot's
        confirmed flush position), each whole from its Begin.
        """
        self.cursor.start_replication(
            slot_name=self.slot, slot_type=psycopg2.extras.REPLICATION_LOGICAL, start_lsn=start_lsn,
            options={"proto_version": "1", "publication_names": self.publication, "messages": "true"},
            decode=False, status_interval=self.status_interval_s,
        )
        self.received_end = self.confirmed = start_lsn
        self._last_start = start_lsn
        self.started = True

    def close(self) -> None:
        """Close the connection (idempotent); unconfirmed transactions are simply sent again later."""
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        self.conn = self.cursor = None
        self.started = False

    # ------------------------------------------------------------------ reading

    @property
    def safe_to_read(self) -> bool:
        """False while psycopg2's keepalive handling could confirm undelivered transactions."""
        if self.received_end <= self.confirmed:
            return True
        return not (self._last_start == 0 or self._last_start <= self.confirmed)

    def read(self, limit: int, timeout_s: float) -> list[Any]:
        """Up to ``limit`` replication messages, waiting at most ``timeout_s`` for the first one.

        Returns fewer (possibly none) when reading on would be unsafe (module docstring): the
        caller confirms what it has delivered and calls again.
        """
        cursor = self.cursor
        out: list[Any] = []
        waited = False
        while len(out) < limit:
            if not self.safe_to_read:
                self._stay_alive()
                break
            message = cursor.read_message()
            if message is None:
                if out or waited or timeout_s <= 0:
                    break
                select.select([cursor], [], [], timeout_s)
                waited = True
                continue
            start = message.data_start
            self._last_start = start
            if message.payload[0] == _COMMIT:
                self.received_end = start
            out.append(message)
        return out

    def _stay_alive(self) -> None:
        """While not reading, send a status update now and then: the walsender ends connections
        that stay silent for ``wal_sender_timeout``, and nothing new is confirmed by it."""
        now = time.monotonic()
        if now - self._last_alive >= _ALIVE_INTERVAL_S:
            self._last_alive = now
            self.cursor.send_feedback(force=True)

    def confirm(self, end_lsn: int, force: bool = False) -> None:
        """Confirm ``end_lsn`` (a delivered transaction's end) as flushed; sent at the next status
        tick of ``read`` or at once with ``force``. Never moves backwards."""
        if end_lsn <= self.confirmed and not force:
            return
        self.confirmed = max(self.confirmed, end_lsn)
        self.cursor.send_feedback(write_lsn=self.received_end, flush_lsn=self.confirmed, force=force)

    @property
    def server_wal_end(self) -> int:
        """The server's WAL end from the latest message or keepalive (0 before any)."""
        return int(self.cursor.wal_end) if self.cursor is not None else 0

    def describe(self) -> str:
        return f"slot {self.slot!r} at {lsn_to_str(self.received_end)} (confirmed {lsn_to_str(self.confirmed)})"
