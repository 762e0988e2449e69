"""Initial snapshot throughput: rows/s of SnapshotReader for ~600-byte rows.

Starts a throwaway PostgreSQL (scripts/pg_local.py) unless ``--dsn`` is given, loads ``--rows``
rows of 12 mixed columns (bigint, timestamptz, text, numeric, float8, bool, text[], jsonb; about
600 bytes of text per row), creates a replication slot exporting its snapshot (as the source
does), and reads the whole table through ``SnapshotReader.iter_table`` into JSON-ready dicts.
Prints rows/s and MB/s (text bytes), and rows/s including ``orjson.dumps`` of every row, with
the CPU seconds of the reading process and of its server backend (on a busy machine wall-clock
rows/s mostly measures the wait for a core).

    python bench/pg_snapshot.py [--rows 300000] [--batch-size 10000] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psycopg2
import psycopg2.extras

from savegress_gw.postgres.connection import connect_kwargs
from savegress_gw.postgres.snapshot import SnapshotReader

REPO = Path(__file__).resolve().parents[1]

SCHEMA = """
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (
    id bigint PRIMARY KEY, created_at timestamptz, updated_at timestamptz, email text,
    name text, status text, amount numeric(12,2), score float8, active bool, tags text[],
    payload jsonb, note text
);
INSERT INTO {table}
SELECT g, now() - g * interval '1 second', now(), 'user' || g || '@example.com',
       'Name ' || md5(g::text), (array['new','active','closed'])[1 + g %% 3], g * 1.25,
       g / 7.0, g %% 2 = 0, array['alpha', 'beta', 'tag' || g %% 100],
       jsonb_build_object(
           'id', g, 'kind', 'order',
           'items', jsonb_build_array(jsonb_build_object('sku', md5(g::text), 'qty', g %% 5),
                                      jsonb_build_object('sku', md5((g + 1)::text), 'qty', 1)),
           'meta', jsonb_build_object('source', 'bench', 'hash', md5((g * 3)::text))),
       repeat(md5((g * 7)::text), 5)
FROM generate_series(1, %(rows)s) g;
ANALYZE {table};
"""
"""Creates and fills ``{table}`` (``str.format``) with ``%(rows)s`` rows (a psycopg2 parameter)."""


def backend_cpu_seconds(pid: int) -> float:
    """User + system CPU of a server backend on this host (/proc), to tell CPU cost from
    waiting on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_pg_local():
    spec = importlib.util.spec_from_file_location("pg_local", REPO / "scripts" / "pg_local.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pg_local"] = module
    spec.loader.exec_module(module)
    return module


def run(dsn: str, rows: int, batch_size: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(SCHEMA.format(table="bench_rows"), {"rows": rows})
        cur.execute(
            "SELECT avg(length(t::text))::int FROM (SELECT * FROM bench_rows LIMIT 1000) t"
        )
        (row_bytes,) = cur.fetchone()
    conn.close()
    elapsed = time.perf_counter() - started
    print(f"loaded {rows} rows (~{row_bytes} bytes of text each) in {elapsed:.1f}s")

    exporter = psycopg2.connect(
        dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection, **connect_kwargs()
    )
    cursor = exporter.cursor()
    cursor.execute(
        "CREATE_REPLICATION_SLOT bench_snap TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
    )
    snapshot_name = cursor.fetchone()[2]
    try:
        for label, encode in (("read+convert", False), ("read+convert+orjson", True)):
            reader = SnapshotReader(dsn, snapshot_name)
            backend = reader._conn.get_backend_pid()
            count = 0
            encoded = 0
            server_cpu = backend_cpu_seconds(backend)
            client_cpu = time.process_time()
            started = time.perf_counter()
            for batch in reader.iter_table(("public", "bench_rows"), batch_size=batch_size):
                count += len(batch)
                if encode:
                    for row, _ in batch:
                        encoded += len(orjson.dumps(row))
            elapsed = time.perf_counter() - started
            client_cpu = time.process_time() - client_cpu
            server_cpu = backend_cpu_seconds(backend) - server_cpu
            reader.close()
            assert count == rows, f"read {count} of {rows} rows"
            print(
                f"{label:>22}: {count / elapsed:>9,.0f} rows/s  "
                f"{count * row_bytes / elapsed / 1e6:6.1f} MB/s  "
                f"({elapsed:.2f}s, batch {batch_size}); CPU: client {client_cpu:.2f}s "
                f"({count / client_cpu:,.0f} rows/s), server backend {server_cpu:.2f}s"
            )
    finally:
        exporter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--dsn", help="use this database instead of a throwaway server")
    args = parser.parse_args()
    if args.dsn:
        run(args.dsn, args.rows, args.batch_size)
        return
    pg_local = load_pg_local()
    pg_local.install()
    with tempfile.TemporaryDirectory(prefix="pg-bench-") as tmp:
        server = pg_local.LocalPostgres(tmp)
        server.start()
        try:
            run(server.dsn(), args.rows, args.batch_size)
        finally:
            server.remove()


if __name__ == "__main__":
    main()
