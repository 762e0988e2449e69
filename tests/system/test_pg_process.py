"""Fault test of the PostgreSQL source: SIGKILL the whole gateway again and again while a writer
commits sequenced rows. Afterwards every row is in the sink, and at no sampled moment did the
slot's confirmed position pass a transaction the sink did not have."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from tests.harness.pg_source import pg_profile, release, slot_row, start_streaming, wait_events
from tests.harness.verify import file_sink_events, verify_sequences

ROWS_PER_TX = 10
BUFFER_SIZE = 2000


class Writer(threading.Thread):
    """Commits rows 1..total in transactions of ROWS_PER_TX, paced over ``duration_s``; records an
    upper bound of each transaction's end LSN (the WAL insert position right after its commit)."""

    def __init__(self, dsn: str, total: int, duration_s: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.total, self.duration_s = dsn, total, duration_s
        self.upper: list[tuple[int, int]] = []  # (end LSN upper bound, last row of the transaction)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = psycopg2.connect(self.dsn)
            conn.autocommit = True
            started = time.monotonic()
            pace = self.duration_s / (self.total / ROWS_PER_TX)
            with conn.cursor() as cur:
                for tx, first in enumerate(range(1, self.total + 1, ROWS_PER_TX)):
                    last = min(first + ROWS_PER_TX - 1, self.total)
                    cur.execute("INSERT INTO seqs SELECT g, repeat('p', 100) FROM generate_series(%s, %s) g",
                                (first, last))
                    cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
                    self.upper.append((int(cur.fetchone()[0]), last))
                    delay = started + (tx + 1) * pace - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


class Interleaver(threading.Thread):
    """Keeps a long transaction open across many of the writer's commits (its Begin and changes
    then carry LSNs below positions already confirmed: the case psycopg2's automatic feedback gets
    wrong); rows 1, 2, ... of table ``longtx``, 5 per transaction."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.committed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = psycopg2.connect(self.dsn)
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    for row in range(self.committed + 1, self.committed + 6):
                        cur.execute("INSERT INTO longtx VALUES (%s)", (row,))
                        time.sleep(0.15)
                    conn.commit()
                    self.committed += 5
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


class Sampler(threading.Thread):
    """Checks, every 0.3 s: every transaction whose end is at or before the slot's confirmed
    position (read first) is in the sink (read second; the sink only grows)."""

    def __init__(self, postgres, dbname: str, writer: Writer, sink: Path) -> None:
        super().__init__(daemon=True)
        self.postgres, self.dbname, self.writer, self.sink = postgres, dbname, writer, sink
        self.stop = threading.Event()
        self.samples = 0
        self.violations: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.3):
            row = slot_row(self.postgres, self.dbname, "gw_slot")
            if row is None:
                continue
            confirmed = row[1]
            confirmed_rows = [last for upper, last in list(self.writer.upper) if upper <= confirmed]
            if not confirmed_rows:
                continue
            seen = {e["after"]["n"] for e in file_sink_events(self.sink)
                    if e["operation"] == "INSERT" and e["table"] == "seqs"}
            missing = [n for n in range(1, max(confirmed_rows) + 1) if n not in seen]
            self.samples += 1
            if missing:
                self.violations.append(f"slot confirmed {confirmed:X} but rows {missing[:5]}... "
                                       f"({len(missing)}) were not in the sink")


def _run(postgres, dbname: str, workdir: Path, total: int, kills: int, duration_s: float) -> None:
    postgres.execute("CREATE TABLE seqs (n int PRIMARY KEY, pad text)", dbname=dbname)
    postgres.execute("CREATE TABLE longtx (n int PRIMARY KEY)", dbname=dbname)
    profile = pg_profile(postgres, dbname, workdir, buffer={"size": BUFFER_SIZE})
    sink = workdir / "out" / "events.jsonl"
    gateway = start_streaming(postgres, dbname, workdir, profile)
    writer = Writer(postgres.dsn(dbname=dbname), total, duration_s)
    sampler = Sampler(postgres, dbname, writer, sink)
    interleaver = Interleaver(postgres.dsn(dbname=dbname))
    writer.start()
    sampler.start()
    interleaver.start()
    rng = random.Random(5)
    for _ in range(kills):
        time.sleep(rng.uniform(1.0, 4.0))
        os.killpg(gateway.pid, signal.SIGKILL)
        gateway.wait(30)
        gateway = start_streaming(postgres, dbname, workdir, profile)  # waits for the old walsender to go
    writer.join(duration_s * 4 + 120)
    interleaver.stop.set()
    interleaver.join(30)
    assert writer.error is None and interleaver.error is None, (writer.error, interleaver.error)
    assert not writer.is_alive()
    stored = postgres.execute("SELECT count(*) FROM seqs", dbname=dbname)[0][0]
    assert stored == total
    wait_events(workdir, lambda e: len({x["after"]["n"] for x in e if x["table"] == "seqs"}) >= total, timeout=300,
                operations=("INSERT",), what=f"all {total} rows in the sink")
    long_rows = interleaver.committed
    wait_events(workdir, lambda e: len({x["after"]["n"] for x in e if x["table"] == "longtx"}) >= long_rows,
                timeout=120, operations=("INSERT",), what=f"all {long_rows} long-transaction rows in the sink")
    sampler.stop.set()
    sampler.join(30)
    delivered = [e for e in file_sink_events(sink) if e["operation"] == "INSERT"]
    verdict = verify_sequences((e["after"]["n"] for e in delivered if e["table"] == "seqs"), total)
    long_verdict = verify_sequences((e["after"]["n"] for e in delivered if e["table"] == "longtx"), long_rows)
    print(f"\n{kills} SIGKILLs, {total} rows: {verdict}; long transactions: {long_verdict}; "
          f"{sampler.samples} confirmed-position samples")
    assert long_verdict.missing == []
    assert verdict.missing == []
    assert not sampler.violations, sampler.violations[:3]
    assert sampler.samples > 0
    # Duplicates only from the in-flight window of each kill: at most what was read but not
    # checkpointed (the buffer, plus the 1 s checkpoint interval of rows) per kill.
    rate = total / duration_s
    assert verdict.duplicates <= kills * (BUFFER_SIZE + 2 * rate * 2), verdict
    assert gateway.stop() == 0


def test_sigkilled_gateway_loses_no_change_and_never_confirms_early(postgres, pg_database: str,
                                                                     tmp_path: Path) -> None:
    try:
        _run(postgres, pg_database, tmp_path, total=12_000, kills=4, duration_s=25)
    finally:
        release(postgres, pg_database)


@pytest.mark.soak
def test_soak_sigkilled_gateway_with_100k_rows(postgres, pg_database: str, tmp_path: Path) -> None:
    try:
        _run(postgres, pg_database, tmp_path, total=100_000, kills=20, duration_s=240)
    finally:
        release(postgres, pg_database)
