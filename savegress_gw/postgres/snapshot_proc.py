"""Snapshot readers in processes of their own: the conversion of COPY text into encoded SNAPSHOT
events (Python, the snapshot's bottleneck) runs beside the source process, not under its GIL.

:func:`open_process_readers` starts ``count`` children (``python -m
savegress_gw.postgres.snapshot_proc``) and returns once each has imported the snapshot, or raises
``SnapshotError`` with every child stopped. A :class:`ProcessReader` is a
``snapshot_load.TableReader``: ``batches`` hands its child a table and yields the encoded
batches it sends back, the same events ``snapshot_load.encoded_batches`` gives in-process.

Protocol, over the child's stdin and stdout, frames of a 4-byte big-endian length and msgpack:

* parent → child: ``{"dsn", "snapshot", "database", "lsn", "timestamp", "batch_size", "parent"}``,
  then ``[schema, table, after, condition]`` per table to read; the end of stdin ends the child.
* child → parent: ``["imported"]`` once its transaction holds the snapshot; per table
  ``["rows", payloads, keys, ids, pks]`` per batch, then ``["end"]``; or ``["error", message]``,
  after which it exits.

A child dies with the process that started it (``PR_SET_PDEATHSIG``; it also exits at the end of
its stdin and if that process was gone before it asked), so it leaves no PostgreSQL connection
behind: the kernel closes its socket and the server ends the backend. It ignores SIGINT and
SIGTERM sent to the whole process group: the source process stops it (``close`` kills it).
Secrets (the DSN) go through the pipe, never the command line.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Generator
from typing import IO, Any

import msgpack

from savegress_gw import components
from savegress_gw.envelope import timestamp_ms
from savegress_gw.postgres.snapshot import SnapshotError, SnapshotReader, TableName
from savegress_gw.postgres.snapshot_load import EncodedBatch, Envelope, encoded_batches

_HEADER = struct.Struct(">I")
_PIPE_BYTES = 1 << 20  # fewer wake-ups per ~10 MB batch than the default 64 KiB


def _write(stream: IO[bytes], message: Any) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return msgpack.unpackb(data, raw=False, use_list=True)


def _widen(stream: IO[bytes]) -> None:
    try:
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (OSError, AttributeError):  # not Linux, or above /proc/sys/fs/pipe-max-size
        pass


class ProcessReader:
    """One child process reading inside the snapshot (module docstring)."""

    def __init__(self, dsn: str, snapshot_name: str | None, envelope: Envelope, batch_size: int) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, close_fds=True)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._in, self._out = self._process.stdin, self._process.stdout
        _widen(self._out)
        self._millis = timestamp_ms(envelope.timestamp)
        _write(self._in, {"dsn": dsn, "snapshot": snapshot_name, "database": envelope.database,
                          "lsn": envelope.lsn, "timestamp": envelope.timestamp, "batch_size": batch_size,
                          "parent": os.getpid()})

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_imported(self) -> None:
        """Return once the child holds the snapshot; raise its ``SnapshotError`` otherwise."""
        reply = _read(self._out)
        if reply != ["imported"]:
            raise SnapshotError(reply[1] if reply and reply[0] == "error" else
                                f"snapshot reader process {self.pid} exited before importing the snapshot")

    def batches(self, table: TableName, after: list[str] | None,
                condition: str | None) -> Generator[EncodedBatch, None, None]:
        schema, name = table
        try:
            _write(self._in, [schema, name, after, condition])
        except OSError as exc:
            raise SnapshotError(f"snapshot reader process {self.pid} is gone: {exc}") from None
        while True:
            message = _read(self._out)
            if message is None:
                raise SnapshotError(f"snapshot reader process {self.pid} ended while reading {schema}.{name}")
            if message[0] == "end":
                return
            if message[0] == "error":
                raise SnapshotError(message[1])
            _, payloads, keys, ids, pks = message
            n = len(payloads)
            events = components.Batch(payloads, keys, ids, ["SNAPSHOT"] * n, [schema] * n, [name] * n,
                                      [self._millis] * n, [time.time_ns()] * n)
            yield events, [tuple(pk) for pk in pks]

    def close(self) -> None:
        """Stop the child (it may be in the middle of a table) and reap it."""
        for stream in (self._in, self._out):
            try:
                stream.close()
            except OSError:
                pass
        self._process.kill()
        self._process.wait()


def open_process_readers(dsn: str, snapshot_name: str | None, count: int, envelope: Envelope,
                         batch_size: int) -> list[ProcessReader]:
    """``count`` reader processes, started together; each has imported ``snapshot_name`` (or taken
    a fresh snapshot, for None) when this returns. If one cannot, all are stopped and its
    ``SnapshotError`` is raised."""
    readers: list[ProcessReader] = []
    try:
        for _ in range(count):
            readers.append(ProcessReader(dsn, snapshot_name, envelope, batch_size))
        for reader in readers:
            reader.wait_imported()
    except BaseException as exc:
        for reader in readers:
            reader.close()
        if isinstance(exc, OSError):
            raise SnapshotError(f"cannot start a snapshot reader process: {exc}") from exc
        raise
    return readers


def _serve(setup: dict[str, Any], stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The child's work: import the snapshot, then read the tables it is given until stdin ends."""
    try:
        reader = SnapshotReader(setup["dsn"], setup["snapshot"])
    except SnapshotError as exc:
        _write(stdout, ["error", str(exc)])
        return
    envelope = Envelope(setup["database"], setup["lsn"], setup["timestamp"])
    try:
        _write(stdout, ["imported"])
        while (task := _read(stdin)) is not None:
            schema, name, after, condition = task
            try:
                for events, pks in encoded_batches(reader, (schema, name), after, setup["batch_size"], condition,
                                                   envelope):
                    _write(stdout, ["rows", events.payloads, events.keys, events.ids, pks])
            except Exception as exc:  # relayed: the source raises it as the snapshot's failure
                _write(stdout, ["error", str(exc) if isinstance(exc, SnapshotError)
                                else f"reading {schema}.{name}: {type(exc).__name__}: {exc}"])
                return
            _write(stdout, ["end"])
    finally:
        reader.close()


def main() -> None:
    from savegress_gw.runtime import die_with_parent

    die_with_parent("snap-reader")
    for signum in (signal.SIGINT, signal.SIGTERM):  # a signal to the whole group: the source decides
        signal.signal(signum, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the protocol's own descriptor
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print goes to the log, not into a frame
    setup = _read(stdin)
    if setup is None or os.getppid() != setup["parent"]:
        return  # the source process is gone (maybe before the death signal was asked for)
    try:
        _serve(setup, stdin, stdout)
    except BrokenPipeError:  # the source process stopped reading: it closed us
        pass


if __name__ == "__main__":
    main()
