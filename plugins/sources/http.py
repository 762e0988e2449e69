"""``source.type: http``: an embedded HTTP endpoint that takes events and answers once they are delivered.

Protocol (``POST <path>``, by default ``/v1/events``):

* The body is one JSON object, a JSON array of objects, or NDJSON (one object per line, blank
  lines ignored) when ``Content-Type`` is ``application/x-ndjson``. ``Content-Encoding: gzip``
  or ``zstd`` is decompressed, capped at ``max_body_size`` like the body itself.
* Every event is checked and completed by :func:`savegress_gw.envelope.normalize`. One bad event
  rejects the whole request: ``400 {"error", "line", "reason"}`` where ``line`` is the NDJSON line,
  the array index + 1, or 1 for a single object (and for problems with the body as a whole).
* A valid request waits until the pipeline has delivered (or parked) all its events:
  ``202 {"accepted": N}``. So 202 means delivered. Without that confirmation within
  ``ack_timeout`` the answer is ``504``: the events may still be delivered, and a client that
  retries gets at-least-once delivery. Requests still waiting at shutdown get ``503``.
* Other answers: ``401`` (bearer token missing or wrong), ``413`` (body, decompressed body or
  event count too large), ``415`` (unsupported ``Content-Encoding``), ``429`` with
  ``Retry-After`` (backpressure, or too many events queued), ``404``/``405`` as JSON.
* ``GET /v1/health`` answers ``{"status": "ok", "paused": bool}`` (no token needed).

Threads: the aiohttp server runs on its own event loop in a background thread started by
``open()``. ``read``/``commit``/``pause``/``resume``/``close`` are called from the source process's
main thread. Requests are handed over through a deque guarded by a condition; commits reach the
waiting handlers through ``loop.call_soon_threadsafe``, and only the loop thread touches them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import hmac
import io
import math
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import orjson
import zstandard
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import Field, SecretStr, field_validator

from savegress_gw import ComponentConfig, Context, Source, SourceBatch, hookimpl
from savegress_gw.envelope import EnvelopeError, normalize
from savegress_gw.units import Duration, Size

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

HEALTH_PATH = "/v1/health"
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
"""Content types whose body is read as one JSON object per line."""

_START_TIMEOUT_S = 10.0
"""How long ``open()`` waits for the server thread to bind."""
_SHUTDOWN_GRACE_S = 2.0
"""How long ``close()`` lets in-flight handlers finish before aiohttp cancels them."""
_READ_CHUNK = 64 * 1024


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``host:port`` → (host, port). ``:8080`` (no host) means every interface (host None).

    IPv6 literals go in brackets (``[::1]:8080``). Port 0 asks the OS for a free port.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen {listen!r} must be host:port (e.g. 127.0.0.1:8080, :8080 for every interface)")
    host = host.removeprefix("[").removesuffix("]")
    return host or None, int(port)


class HttpSourceConfig(ComponentConfig):
    listen: str = "127.0.0.1:8080"
    """``host:port`` the ingest endpoint listens on; ``:8080`` means every interface, port 0 any free port."""
    path: str = "/v1/events"
    """URL path that takes ``POST`` requests of events."""
    max_body_size: Size = Field(10 * 1024 * 1024, gt=0)
    """Largest request body, checked both as received and after decompression (larger: 413)."""
    max_batch_events: int = Field(10_000, ge=1)
    """Most events one request may carry (more: 413)."""
    auth_token: SecretStr | None = Field(None, min_length=1)
    """When set, requests must send ``Authorization: Bearer <token>`` (otherwise 401)."""
    ack_timeout: Duration = Field(30.0, gt=0)
    """How long a request waits for its events to be delivered before it is answered 504."""
    max_queued_events: int = Field(100_000, ge=1)
    """Events accepted but not yet read by the pipeline; at or above this, requests get 429."""
    retry_after: Duration = Field(1.0, gt=0)
    """``Retry-After`` sent with 429 (rounded up to whole seconds, at least 1)."""

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or value == HEALTH_PATH:
            raise ValueError(f"path {value!r} must start with '/' and differ from {HEALTH_PATH}")
        return value


@dataclass(slots=True)
class _Request:
    """One accepted request as queued for ``read``: never split across positions."""

    seq: int
    events: list[dict[str, Any]]


class _Reject(Exception):
    """An answer other than 202, raised anywhere while a request is handled."""

    def __init__(self, status: int, error: str, reason: str, *, line: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.body: dict[str, Any] = {"error": error, "reason": reason}
        if line is not None:
            self.body["line"] = line
        self.headers = headers

    def response(self) -> web.Response:
        return _json_response(self.status, self.body, self.headers)


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _bad_request(error: str, reason: str, line: int = 1) -> _Reject:
    return _Reject(400, error, reason, line=line)


def _too_large(reason: str) -> _Reject:
    return _Reject(413, "payload too large", reason)


# ------------------------------------------------------------------------------ body decoding


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, zstd) without ever holding more than ``limit``
    decompressed bytes; raise :class:`_Reject` 413 beyond it, 400 for a corrupt or truncated
    body and 415 for an encoding this source does not speak."""
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(body, limit)
    if encoding == "zstd":
        return _unzstd(body, limit)
    raise _Reject(415, "unsupported content encoding",
                  f"Content-Encoding {encoding!r} is not supported; use gzip, zstd or none")


def _gunzip(body: bytes, limit: int) -> bytes:
    try:
        data = gzip.GzipFile(fileobj=io.BytesIO(body)).read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise _bad_request("invalid body", f"the body is not valid gzip: {exc}") from None
    if len(data) > limit:
        raise _too_large(f"the decompressed body exceeds max_body_size ({limit} bytes)")
    return data


_ZSTD = zstandard.ZstdDecompressor()


def _unzstd(body: bytes, limit: int) -> bytes:
    try:
        # A bounded read first, so a zip bomb never expands past the limit...
        if len(_ZSTD.stream_reader(body, read_across_frames=True).read(limit + 1)) > limit:
            raise _too_large(f"the decompressed body exceeds max_body_size ({limit} bytes)")
        # ...then frame by frame, now known to fit, because only this notices a truncated frame.
        parts, rest = [], body
        while rest:
            frame = _ZSTD.decompressobj()
            parts.append(frame.decompress(rest))
            if not frame.eof:
                raise _bad_request("invalid body", "the zstd body is truncated (its last frame is incomplete)")
            rest = frame.unused_data
    except zstandard.ZstdError as exc:
        raise _bad_request("invalid body", f"the body is not valid zstd: {exc}") from None
    return b"".join(parts)


def parse_body(body: bytes, ndjson: bool) -> list[tuple[int, Any]]:
    """The decoded JSON values of a body, each with its ``line`` (NDJSON line, array index + 1,
    or 1 for a single value). Raises :class:`_Reject` 400 naming the line of a syntax error."""
    if ndjson:
        return [(number, _loads(line, number)) for number, line in enumerate(body.split(b"\n"), 1) if line.strip()]
    if not body.strip():
        raise _bad_request("invalid JSON", "the body is empty; send an event object or an array of them")
    value = _loads(body, 1)
    if isinstance(value, list):
        return list(enumerate(value, 1))
    return [(1, value)]


def _loads(text: bytes, line: int) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _bad_request("invalid JSON", str(exc), line) from None


def normalize_all(values: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    """Normalize every value as an ``http`` event; the first invalid one raises 400 with its line."""
    events = []
    for line, value in values:
        try:
            events.append(normalize(value, "http"))
        except EnvelopeError as exc:
            raise _bad_request("invalid event", str(exc), line) from None
    return events


# ------------------------------------------------------------------------------------ source


class HttpSource(Source):
    """Embedded HTTP ingest: a request is answered 202 only once all its events are delivered.

    A request's events are queued as one unit with a sequence number; ``read`` returns whole
    requests with ``position`` = the highest sequence number included, and ``commit(position)``
    answers every request up to it. Counters (plain attributes, for metrics): ``requests_total``
    (requests to ``path``), ``rejected_total`` (answers other than 202 by status code) and
    ``events_accepted`` (events of valid requests handed to the pipeline).
    """

    name = "http"
    Config = HttpSourceConfig
    trusted = True  # the handlers already normalized every event (to answer 400 per request)
    config: HttpSourceConfig
    _log: FilteringBoundLogger

    def __init__(self, config: HttpSourceConfig) -> None:
        super().__init__(config)
        self.port: int | None = None
        """The bound port (useful with ``listen: ...:0``), set by ``open()``."""
        self.url: str | None = None
        """Base URL of the server, e.g. ``http://127.0.0.1:8080``, set by ``open()``."""
        self.requests_total = 0
        self.rejected_total: dict[int, int] = {}
        self.events_accepted = 0
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()  # guarded by _cond, like the four below
        self._queued_events = 0
        self._next_seq = 1
        self._paused = False
        self._closing = False
        self._waiters: dict[int, asyncio.Future[int | None]] = {}  # seq → outcome; loop thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- main-thread interface

    def open(self, context: Context) -> None:
        """Start the server thread and wait until it listens; raise :class:`OSError` naming
        ``listen`` when it cannot bind."""
        self._log = context.log
        listen = self.config.listen
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),),
                                        name=f"http-source {listen}", daemon=True)
        self._thread.start()
        try:
            self.port = started.result(timeout=_START_TIMEOUT_S)
        except Exception as exc:  # bind errors, and a server that did not start in time
            self.close()
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise OSError(f"http source cannot listen on {listen}: {reason}") from exc
        host = parse_listen(listen)[0] or "127.0.0.1"
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        self._log.info("http source listening", url=self.url, path=self.config.path)
        if context.profile is not None:
            self._warn_if_batches_outwait_requests(context.profile.batching)

    def _warn_if_batches_outwait_requests(self, batching: Any) -> None:
        """Warn when the batcher may hold events longer than a request waits for them (``mode:
        time`` with an ``interval`` of minutes, as in the guide's batch profile)."""
        held = batching.interval if batching.mode == "time" else batching.max_wait
        if held >= self.config.ack_timeout:
            setting = "batching.interval" if batching.mode == "time" else "batching.max_wait"
            self._log.warning(
                f"{setting} holds events longer than source.ack_timeout: requests are answered 504 "
                "before their batch goes out (the events are still delivered then, or at shutdown); "
                "raise source.ack_timeout above it if clients should wait for delivery",
                held_s=held, ack_timeout_s=self.config.ack_timeout)

    def read(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        """The oldest request, whole (whatever ``max_events`` says); ``position`` is its sequence
        number. One request per batch, so that drops and commits map to exactly one caller.
        Waits at most ``timeout_s`` for a request; ``None`` if none came."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closing, timeout_s)
            if not self._queue:
                return None
            request = self._queue.popleft()
            self._queued_events -= len(request.events)
        return SourceBatch(request.events, request.seq)

    def commit(self, position: int, dropped: int = 0) -> None:
        """Answer 202 to every request with a sequence number up to ``position``; the request at
        ``position`` learns that ``dropped`` of its events were discarded by a drop policy."""
        self._call_in_loop(self._settle, position, dropped)

    def pause(self) -> None:
        """New requests get 429 until ``resume``; queued ones are still read and answered."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False

    def close(self) -> None:
        """Stop the server: requests not yet committed get 503, then the thread ends. Idempotent."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._stop is not None:
            self._call_in_loop(self._stop.set)
        if self._thread is not None:
            self._thread.join(_SHUTDOWN_GRACE_S + 5.0)
            if self._thread.is_alive():
                self._log.warning("http source thread did not stop", thread=self._thread.name)

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` on the server loop; a no-op once the loop is gone."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop already closed: nobody is waiting any more
            pass

    # ------------------------------------------------------------------- server thread

    async def _serve(self, started: concurrent.futures.Future[int]) -> None:
        """Body of the server thread: bind, report the port through ``started``, serve until
        ``close()``, then answer every waiter 503 and shut the server down."""
        app = web.Application(middlewares=[_json_http_errors])
        app.router.add_post(self.config.path, self._handle_events)
        app.router.add_get(HEALTH_PATH, self._handle_health)
        # auto_decompress=False: this source decompresses itself, with a size cap.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=_SHUTDOWN_GRACE_S)
        host, port = parse_listen(self.config.listen)
        try:
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
        except Exception as exc:  # reported to open(), which raises it in the caller's thread
            await runner.cleanup()
            started.set_exception(exc)
            return
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        started.set_result(runner.addresses[0][1])
        await self._stop.wait()
        self._settle(None, None)
        await runner.cleanup()

    def _settle(self, position: int | None, dropped: int | None) -> None:
        """Resolve the waiters up to ``position`` (all when None): with the number of events
        dropped by policy (0 for all but the one at ``position``), or None when not committed."""
        for seq in list(self._waiters):
            if position is not None and seq > position:
                break  # waiters are registered in sequence order
            waiter = self._waiters.pop(seq)
            if not waiter.done():
                waiter.set_result(None if dropped is None else dropped if seq == position else 0)

    async def _handle_health(self, request: web.Request) -> web.Response:
        status = 503 if self._closing else 200
        return _json_response(status, {"status": "shutting down" if self._closing else "ok", "paused": self._paused})

    async def _handle_events(self, request: web.Request) -> web.Response:
        self.requests_total += 1
        try:
            self._authorize(request)
            self._check_admission()
            events = await self._decode(request)
            if not events:
                return _json_response(202, {"accepted": 0})
            return await self._deliver(events)
        except _Reject as reject:
            self.rejected_total[reject.status] = self.rejected_total.get(reject.status, 0) + 1
            return reject.response()

    def _authorize(self, request: web.Request) -> None:
        """401 unless ``auth_token`` is off or the request carries it as a bearer token."""
        token = self.config.auth_token
        if token is None:
            return
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(),
                                                              token.get_secret_value().encode()):
            return
        raise _Reject(401, "unauthorized", "missing or invalid bearer token",
                      headers={"WWW-Authenticate": 'Bearer realm="savegress-gw"'})

    def _check_admission(self) -> None:
        """503 while closing; 429 while paused or while ``max_queued_events`` are queued."""
        if self._closing:
            raise _Reject(503, "shutting down", "the gateway is shutting down; retry against a running instance")
        if self._paused:
            raise self._throttled("the gateway is applying backpressure")
        if self._queued_events >= self.config.max_queued_events:
            raise self._throttled(f"{self._queued_events} events are waiting to be read "
                                  f"(max_queued_events {self.config.max_queued_events})")

    def _throttled(self, why: str) -> _Reject:
        seconds = max(1, math.ceil(self.config.retry_after))
        return _Reject(429, "too many requests", f"{why}; retry after {seconds}s",
                       headers={"Retry-After": str(seconds)})

    async def _decode(self, request: web.Request) -> list[dict[str, Any]]:
        """The request's normalized events, or :class:`_Reject` (400, 413, 415)."""
        limit = self.config.max_body_size
        body = decompress(await _read_body(request, limit),
                          request.headers.get("Content-Encoding", "").strip().lower(), limit)
        values = parse_body(body, request.content_type in NDJSON_TYPES)
        if len(values) > self.config.max_batch_events:
            raise _too_large(f"the request carries {len(values)} events; max_batch_events is "
                             f"{self.config.max_batch_events}")
        return normalize_all(values)

    async def _deliver(self, events: list[dict[str, Any]]) -> web.Response:
        """Queue ``events`` as one request and wait for its commit: 202, or 504 after
        ``ack_timeout``, or 503 when the source closes first."""
        waiter: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        with self._cond:
            self._check_admission()  # pause or close may have come while the body was read
            seq = self._next_seq
            self._next_seq += 1
            self._waiters[seq] = waiter
            self._queue.append(_Request(seq, events))
            self._queued_events += len(events)
            self._cond.notify()
        self.events_accepted += len(events)
        try:
            dropped = await asyncio.wait_for(waiter, self.config.ack_timeout)
        except asyncio.TimeoutError:
            raise _Reject(504, "delivery not confirmed",
                          f"the events were accepted but their delivery was not confirmed within "
                          f"{self.config.ack_timeout:g}s; they may still be delivered, so a retry may "
                          f"deliver them twice (at-least-once)") from None
        finally:
            self._waiters.pop(seq, None)
        if dropped is None:
            raise _Reject(503, "shutting down",
                          "the gateway is shutting down before the delivery of these events was confirmed; "
                          "they may or may not have been delivered, retry (at-least-once)")
        if dropped:
            return _json_response(202, {"accepted": len(events) - dropped, "dropped": dropped})
        return _json_response(202, {"accepted": len(events)})


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(f"the body ({request.content_length} bytes) exceeds max_body_size ({limit} bytes)")
    body = bytearray()
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise _too_large(f"the body exceeds max_body_size ({limit} bytes)")
    return bytes(body)


@web.middleware
async def _json_http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own error answers (404, 405, ...) as JSON, keeping ``Allow`` on 405."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _json_response(exc.status, {"error": exc.reason.lower(),
                                           "reason": f"{request.method} {request.path}: {exc.reason}"}, headers)


@hookimpl
def gw_register_components(register: Callable[[type[Source]], None]) -> None:
    register(HttpSource)
