"""A scriptable HTTP receiver for the webhook sink, and what conformance tests observe around it.

:class:`FlakyReceiver` listens on ``127.0.0.1:<free port>`` in a background thread
(``http.server``, one thread per connection, HTTP/1.1 keep-alive like the webhook sink's client)
and records the ``after.seq`` of every event it accepted, from the batch wrapper
``{"events": [...]}`` or a bare envelope (``batch_size: 1``). Everything it does is switchable
while it runs:

- ``fail_rate``: that fraction of requests (seeded RNG, reproducible) is answered 503;
- :meth:`FlakyReceiver.go_down` / :meth:`FlakyReceiver.come_up` (or :meth:`down_between` on a
  timer): answer every request with 503, or refuse connections by closing the listener and every
  open connection, then listen again on the same port;
- ``reject``: a predicate on the event; a request holding such an event is answered 400 (the
  sink parks the whole request);
- ``delay`` per request and ``rate`` (events/s, one token bucket across connections): slow answers.

The rest are helpers of the conformance suite (tests/system/test_conformance.py): the final
counters of a stopped gateway, the resident memory of its process tree, the file dead-letter
queue's content, and ``savegress-gw dlq`` as a subprocess.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from savegress_gw.deadletter import DeadLetter, DeadLetterStore
from tests.harness.gateway import Gateway, children_of

Predicate = Callable[[dict[str, Any]], bool]


def seq_of(event: dict[str, Any]) -> int:
    return int(event["after"]["seq"])


def poison_every(n: int) -> Predicate:
    """Events whose ``after.seq`` is a multiple of ``n`` (the generator has no poison field)."""
    return lambda event: seq_of(event) % n == 0


@dataclass
class Request:
    """One request as the receiver answered it."""

    at: float  # time.monotonic() of the answer
    status: int  # 0: the connection was cut (the receiver went down mid-request)
    events: int


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, port: int, receiver: "FlakyReceiver") -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request (a killed gateway) is part of the game: no traceback."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.receiver._connections.add(self.connection)

    def finish(self) -> None:
        self.server.receiver._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.server.receiver._handle(self)

    do_PUT = do_PATCH = do_POST

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class FlakyReceiver:
    """A webhook endpoint that fails, goes down, rejects and slows down on request.

    ``accepted`` holds the ``seq`` of every accepted event in arrival order, duplicates included;
    an event is recorded before the 2xx answer is written (a receiver commits, then answers), so
    a cut connection after that makes the sink retry and the receiver count a duplicate.
    """

    def __init__(self, *, fail_rate: float = 0.0, seed: int = 0, reject: Predicate | None = None,
                 delay: float = 0.0, rate: float | None = None, retry_after: str | None = None,
                 path: str = "/events") -> None:
        self.fail_rate = fail_rate
        self.reject = reject
        self.delay = delay
        self.rate = rate
        self.retry_after = retry_after
        self.path = path
        self.accepted: list[int] = []
        self.requests: list[Request] = []
        self.down_since: float | None = None
        self.up_since: float | None = None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._bucket_free_at = 0.0
        self._mode: str | None = None  # None (up), "503", "refuse"
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._timers: list[threading.Timer] = []
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FlakyReceiver":
        self._listen(0)
        return self

    def _listen(self, port: int) -> None:
        self._server = _Server(port, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"flaky-http-{self.port}", daemon=True)
        self._thread.start()

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for conn in list(self._connections):  # keep-alive connections would go on being served
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._close_listener()

    def __enter__(self) -> "FlakyReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    # ------------------------------------------------------------------ faults

    def go_down(self, refuse: bool = True) -> None:
        """From now on refuse connections (``refuse``: listener and open connections closed) or
        answer every request with 503."""
        with self._lock:
            self._mode = "refuse" if refuse else "503"
            self.down_since, self.up_since = time.monotonic(), None
        if refuse:
            self._close_listener()

    def come_up(self) -> None:
        """Serve again (on the same port)."""
        with self._lock:
            mode, self._mode = self._mode, None
            self.up_since = time.monotonic()
        if mode == "refuse":
            for attempt in range(100):
                try:
                    self._listen(self.port)
                    break
                except OSError:  # the port is briefly busy: retry
                    if attempt == 99:
                        raise
                    time.sleep(0.05)

    def down_between(self, start_in: float, end_in: float, refuse: bool = True) -> None:
        """Go down ``start_in`` seconds from now and come back up ``end_in`` seconds from now."""
        for delay, action in ((start_in, lambda: self.go_down(refuse)), (end_in, self.come_up)):
            timer = threading.Timer(delay, action)
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    @property
    def down(self) -> bool:
        return self._mode is not None

    # ------------------------------------------------------------------ observations

    def seqs(self) -> list[int]:
        with self._lock:
            return list(self.accepted)

    def distinct(self) -> set[int]:
        with self._lock:
            return set(self.accepted)

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def duplicates(self) -> int:
        counts = Counter(self.seqs())
        return sum(c - 1 for c in counts.values() if c > 1)

    def statuses(self) -> Counter[int]:
        with self._lock:
            return Counter(r.status for r in self.requests)

    # ------------------------------------------------------------------ serving

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        events = self._events(body)
        with self._lock:
            mode = self._mode
            fail = mode is None and self.fail_rate > 0 and self._rng.random() < self.fail_rate
        if mode == "refuse":  # a connection that slipped in while the listener closed
            self._note(0, len(events))
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if mode == "503" or fail:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            self._respond(handler, 503, b"injected failure", headers, len(events))
            return
        reject = self.reject
        poison = [seq_of(e) for e in events if reject is not None and reject(e)]
        if poison:
            self._respond(handler, 400, f"poison events: seq {poison[:10]}".encode(), None, len(events))
            return
        self._slow_down(len(events))
        with self._lock:
            if self._mode == "refuse":  # went down while we waited: the answer will not arrive
                self._note(0, len(events))
                return
            self.accepted.extend(seq_of(e) for e in events)
        self._respond(handler, 200, b"ok", None, len(events))

    @staticmethod
    def _events(body: bytes) -> list[dict[str, Any]]:
        data = orjson.loads(body)
        return data["events"] if isinstance(data, dict) and "events" in data else [data]

    def _slow_down(self, events: int) -> None:
        wait = self.delay
        rate = self.rate
        if rate:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._bucket_free_at)
                self._bucket_free_at = start + events / rate
                wait += self._bucket_free_at - now
        if wait > 0:
            time.sleep(wait)

    def _respond(self, handler: _Handler, status: int, body: bytes, headers: dict[str, str] | None,
                 events: int) -> None:
        try:
            handler.answer(status, body, headers)
        except OSError:
            status = 0
        self._note(status, events)

    def _note(self, status: int, events: int) -> None:
        with self._lock:
            self.requests.append(Request(time.monotonic(), status, events))


# ---------------------------------------------------------------------------------------------
# around the gateway


def kill_tree(gateway: Gateway) -> None:
    """SIGKILL the whole process group of a gateway that is still running (a failed test's
    leftover: with its receiver gone it would retry forever)."""
    if gateway.process is None or gateway.process.poll() is not None:
        return
    try:
        gateway.signal_group(signal.SIGKILL)
    except ProcessLookupError:
        pass
    gateway.process.wait(10)


def webhook_output(receiver: FlakyReceiver, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": receiver.url, "batch_size": 100, "timeout": "5s", **extra}


def final_counters(gateway: Gateway) -> dict[str, Any]:
    """The totals the supervisor logs when it stops (its ``gateway stopped`` line)."""
    for line in gateway.stderr().splitlines():
        if line.startswith("{") and '"gateway stopped"' in line:
            return json.loads(line)
    raise AssertionError(f"no 'gateway stopped' line in:\n{gateway.stderr()[-5000:]}")


def log_lines(gateway: Gateway, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of every gateway process whose message is ``event``."""
    found = []
    for line in gateway.stderr().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def vm_rss_bytes(pid: int) -> int:
    """``VmRSS`` of one process (0 when it is gone or a zombie)."""
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, frontier = [pid], [pid]
    while frontier:
        children = [c for p in frontier for c in children_of(p)]
        tree.extend(children)
        frontier = children
    return tree


def tree_rss_bytes(pid: int) -> int:
    """Sum of ``VmRSS`` over the process tree of ``pid``. Shared memory (the rings, the metrics
    block) is counted once per process that touched it, so this overstates: a safe upper bound."""
    return sum(vm_rss_bytes(p) for p in process_tree(pid))


def dir_size(path: Path) -> int:
    try:
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    except OSError:
        return 0


@dataclass
class Samples:
    """What a :class:`Sampler` saw: (seconds since start, value) per probe."""

    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def values(self, name: str) -> list[float]:
        return [v for _, v in self.series.get(name, [])]

    def peak(self, name: str) -> float:
        return max(self.values(name), default=0.0)


class Sampler:
    """Calls each probe every ``interval`` seconds in a background thread until stopped.

    A probe returns a number, or None when it has nothing to say this time (a metrics endpoint
    that is gone); its exceptions count as None.
    """

    def __init__(self, probes: dict[str, Callable[[], float | None]], interval: float = 0.5) -> None:
        self.probes, self.interval = probes, interval
        self.samples = Samples({name: [] for name in probes})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._started = 0.0

    def __enter__(self) -> "Sampler":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for name, probe in self.probes.items():
                try:
                    value = probe()
                except Exception:
                    value = None
                if value is not None:
                    self.samples.series[name].append((time.monotonic() - self._started, float(value)))
            if self._stop.wait(self.interval):
                return


def gateway_probes(gateway: Gateway, **extra: Callable[[], float | None]) -> dict[str, Callable[[], float | None]]:
    """Resident memory of the whole tree, plus ``extra`` probes."""
    return {"rss": lambda: tree_rss_bytes(gateway.pid) or None, **extra}


def metric_probe(gateway: Gateway, name: str, labels: str = "") -> Callable[[], float | None]:
    def probe() -> float | None:
        try:
            return gateway.metric(name, labels)
        except Exception:
            return None
    return probe


# ------------------------------------------------------------------ the file dead-letter queue


def dlq_entries(base_dir: Path) -> list[DeadLetter]:
    return list(DeadLetterStore(base_dir).entries()) if base_dir.is_dir() else []


def entry_seq(entry: DeadLetter) -> int:
    return seq_of(orjson.loads(entry.payload))


def dlq_seqs(base_dir: Path) -> list[int]:
    return [entry_seq(e) for e in dlq_entries(base_dir)]


def dlq_cli(gateway: Gateway, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m savegress_gw dlq ARGS -c <the gateway's profile>``, in the gateway's directory."""
    return subprocess.run([sys.executable, "-m", "savegress_gw", "dlq", *args, "-c", str(gateway.profile_path)],
                          capture_output=True, text=True, timeout=timeout, cwd=gateway.workdir,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def listed_ids(output: str) -> list[str]:
    """The entry ids of ``dlq list`` output."""
    return [line.split()[0] for line in output.splitlines() if line.startswith("dlq-")]


# ------------------------------------------------------------------ accounting


@dataclass
class Accounting:
    """Where each of the events 1..expected ended up."""

    expected: int
    delivered: list[int]
    parked: list[int]

    @property
    def union(self) -> set[int]:
        return set(self.delivered) | set(self.parked)

    @property
    def missing(self) -> list[int]:
        union = self.union
        return [n for n in range(1, self.expected + 1) if n not in union]

    @property
    def invented(self) -> list[int]:
        return sorted(n for n in self.union if not 1 <= n <= self.expected)

    @property
    def both(self) -> set[int]:
        return set(self.delivered) & set(self.parked)

    @staticmethod
    def _dups(values: Iterable[int]) -> int:
        return sum(c - 1 for c in Counter(values).values() if c > 1)

    def __str__(self) -> str:
        return (f"expected {self.expected}: delivered {len(set(self.delivered))} distinct "
                f"({self._dups(self.delivered)} duplicates), parked {len(set(self.parked))} distinct "
                f"({self._dups(self.parked)} duplicates), in both {len(self.both)}, "
                f"missing {len(self.missing)} (first {self.missing[:10]}), invented {self.invented[:10]}")


def account(receiver: FlakyReceiver, dlq_dir: Path | None, expected: int) -> Accounting:
    return Accounting(expected, receiver.seqs(), dlq_seqs(dlq_dir) if dlq_dir is not None else [])


MB = 1024 * 1024
