"""ReplicationStream against a real PostgreSQL: psycopg2's automatic flush advance is fenced.

The trap (research notes §5.4): psycopg2 moves ``flush_lsn`` to a keepalive's WAL end when the
last explicitly confirmed LSN is >= the ``data_start`` of the last message it returned. A long
transaction that began before already confirmed ones has such old ``data_start`` values; if its
changes are being read while newer, complete transactions are not yet delivered, a keepalive
would confirm those too. (Without the fence in ``ReplicationStream.read`` this test fails with
"an undelivered transaction was confirmed".)
"""

from __future__ import annotations

import time

import psycopg2
import psycopg2.extensions

from savegress_gw.postgres.connection import connect_kwargs
from savegress_gw.postgres.pgoutput import Commit, decode
from savegress_gw.postgres.replication import ReplicationStream
import pytest

from tests.harness.pg_source import release, slot_row


@pytest.fixture()
def db(postgres, pg_database: str):
    yield pg_database
    release(postgres, pg_database)


def test_keepalives_never_confirm_received_but_undelivered_transactions(postgres, db: str) -> None:
    postgres.execute("CREATE TABLE t (id bigint PRIMARY KEY, pad text)", dbname=db)
    postgres.execute("CREATE PUBLICATION p FOR TABLE t", dbname=db)
    # Keepalives every ~1.5 s (half of wal_sender_timeout), also while a big transaction is sent:
    # status updates every 10 s are too rare to spare the walsender from asking for them.
    dsn = psycopg2.extensions.make_dsn(postgres.dsn(dbname=db), **connect_kwargs({"wal_sender_timeout": "3s"}))
    stream = ReplicationStream(dsn, "fence", "p", status_interval_s=10.0)
    stream.connect(10)
    start, _ = stream.create_slot(export=False)
    long_tx = psycopg2.connect(postgres.dsn(dbname=db))
    with long_tx.cursor() as cur:  # begins before A1..A5, commits after them: old LSNs, sent last
        cur.execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1000000, 1150000) g")
    for i in range(1, 6):
        postgres.execute("INSERT INTO t VALUES (%s, 'a')", (i,), dbname=db)
    long_tx.commit()
    long_tx.close()

    stream.start(start)
    ends: list[int] = []
    deadline = time.monotonic() + 60
    while len(ends) < 5 and time.monotonic() < deadline:  # read A1..A5, confirm only A1
        for message in stream.read(50, 0.2):
            if isinstance(decode(message.payload), Commit):
                ends.append(message.data_start)
                if len(ends) == 1:
                    stream.confirm(ends[0], force=True)
    assert len(ends) == 5
    # A slow consumer keeps reading the long transaction while A2..A5 stay undelivered.
    read_after = 0
    until = time.monotonic() + 6
    while time.monotonic() < until:
        read_after += len(stream.read(200, 0.05))
        time.sleep(0.02)
    stream.cursor.send_feedback(force=True)  # whatever psycopg2 holds as flushed now goes out
    time.sleep(0.5)
    assert stream.received_end == ends[-1] and stream.confirmed == ends[0]
    assert slot_row(postgres, db, "fence")[1] == ends[0], "an undelivered transaction was confirmed"
    # Once A2..A5 are delivered and confirmed, reading goes on to the end of the long transaction.
    stream.confirm(ends[-1])
    total = 0
    deadline = time.monotonic() + 120
    while stream.received_end == ends[-1] and time.monotonic() < deadline:
        total += len(stream.read(5000, 0.2))
    assert stream.received_end > ends[-1] and total + read_after > 150_000
    stream.close()
