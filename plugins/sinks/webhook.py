"""The webhook sink: events POSTed as JSON to an HTTP(S) endpoint, signed and optionally compressed.

``output: {type: webhook, url: https://your-api.com/events, method: POST, headers: {Authorization:
"Bearer ${WEBHOOK_TOKEN}"}, batch_size: 100, timeout: 30s, tls: {skip_verify: false, ca_file: ...},
secret: ${WEBHOOK_SECRET}, retry: {...}, compress: false}`` (``spec/reference.md`` 3.3; ``type: http``
is an alias).

Request format (``spec/reference.md`` 3.3 and 2.5): with ``batch_size`` 1 the body is one event
envelope; above 1 it is the batch wrapper ``{"batch_id": "batch-<hex>", "batch_size": N,
"batch_timestamp": "<ISO UTC>", "events": [...]}``. Headers: ``Content-Type: application/json``,
``X-Savegress-Event-ID`` (the event id, or the batch id), ``X-Savegress-Timestamp`` (Unix
seconds), ``X-Savegress-Signature: sha256=<hex HMAC-SHA256(secret, body)>`` when a secret is set,
``Content-Encoding`` when the body is compressed, then the configured ``headers``.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import http.client
import math
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import timezone
from typing import Annotated, Any, Callable, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, field_validator, model_validator

from savegress_gw import Batch, Component, ComponentConfig, Compressor, Context, Outcome, Sink, Status, hookimpl
from savegress_gw.components import DeliveryCallback
from savegress_gw.envelope import now_iso
from savegress_gw.profile.settings import not_yet
from savegress_gw.units import Duration

REASON_BODY_BYTES = 200
"""How much of a failed response's body goes into the outcome's ``reason``."""
_DRAIN_LIMIT = 64 * 1024
"""Response bytes read to keep the connection alive; a longer response closes the connection."""
_RESERVED_HEADERS = frozenset({
    "content-length", "content-encoding", "transfer-encoding",
    "x-savegress-event-id", "x-savegress-timestamp", "x-savegress-signature",
})
"""Headers the sink sets on every request, which ``headers`` may not override."""
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STALE = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
"""Errors of a kept-alive connection the server closed while idle: the request is tried once more, fresh."""


class TlsOptions(ComponentConfig):
    skip_verify: bool = False
    """Accept any server certificate and host name (testing only)."""
    ca_file: str | None = None
    """CA bundle (PEM) that verifies the server, instead of the system trust store."""
    cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS; holds the private key too unless ``key_file`` is set."""
    key_file: str | None = None
    """Private key (PEM) of ``cert_file``."""

    @model_validator(mode="after")
    def _key_needs_cert(self) -> "TlsOptions":
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file needs tls.cert_file")
        return self


class RetryOptions(ComponentConfig):
    """Per-output ``retry.*`` keys; unset keys keep the profile's ``retry`` values."""

    enabled: bool | None = None
    """Off: a failed request's events are parked after the first attempt."""
    max_attempts: int | None = Field(None, ge=1)
    """Attempts per batch before its events go to the dead-letter queue."""
    initial_delay: Duration | None = None
    """Delay before the first retry."""
    max_delay: Duration | None = None
    """Longest delay between retries."""
    multiplier: float | None = Field(None, ge=1.0)
    """Growth of the delay from one retry to the next."""
    jitter: float | None = Field(None, ge=0.0, le=1.0)
    """Each delay is randomized by ± this fraction."""
    delay: Duration | None = None
    """A fixed delay between attempts (the quickstart's spelling): ``initial_delay`` = ``max_delay``
    = ``delay`` and ``multiplier`` 1; excludes those three keys."""

    @model_validator(mode="after")
    def _fixed_or_exponential(self) -> "RetryOptions":
        if self.delay is not None:
            clash = [k for k in ("initial_delay", "max_delay", "multiplier") if getattr(self, k) is not None]
            if clash:
                raise ValueError(f"retry.delay is a fixed delay; it excludes retry.{clash[0]}")
        return self


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


BatchTimeoutLater = not_yet("per-output batch_timeout; set batching.max_wait")


class WebhookSink(Sink):
    """Delivers each batch in requests of up to ``batch_size`` events, one after another, in order.

    **Outcome.** Each request ends as: 2xx → delivered; 408, 429, 5xx, a timeout or a connection
    error → ERRORED (retried by the pipeline, ``retry_after_s`` from a ``Retry-After`` header in
    seconds or as an HTTP date); any other status (3xx, 4xx) → REJECTED (the events go to the
    dead-letter queue), the reason holding the status and the first :data:`REASON_BODY_BYTES` of
    the response. After a REJECTED request the next one is still sent; the first ERRORED request
    stops the send and its events and every later one's are reported failed. So a send reports
    DELIVERED; or, when only some requests failed, DELIVERED with ``failed`` indices and
    ``failed_status`` ERRORED if any request errored (a rejected one among them is rejected again
    on retry) else REJECTED; or, when every event failed, that status for the whole batch. ``done``
    is called once, before ``send`` returns.

    **Blocking.** ``send`` blocks for its requests: each one (connect, TLS handshake, sending,
    waiting for the response) is bounded by about ``timeout``, and the first failure ends the
    send, so a send lasts at most about ``timeout`` per request it makes.

    **Connection.** One HTTP/1.1 keep-alive connection, opened on the first request, reopened after
    any failure or a response that closes it. A kept-alive connection the server closed while idle
    is detected on the next request, which is then repeated once on a fresh connection (the server
    may have received it: delivery is at least once).

    **Body.** Built from the payload bytes without parsing them. With ``compress`` and a profile
    compressor, the body is compressed and ``Content-Encoding`` names the encoding (``lz4`` or
    ``zstd``; none when the compressor leaves it ``identity``, e.g. below ``compression.min_size``).
    The signature covers the body exactly as sent, i.e. after compression.

    **Retry.** The pipeline owns retries; :meth:`retry_overrides` tells it what ``retry`` sets.
    """

    name = "webhook"

    class Config(ComponentConfig):
        url: str
        """Endpoint, ``http://`` or ``https://`` (credentials go in ``headers``, not in the URL)."""
        method: Annotated[Literal["POST", "PUT", "PATCH"], BeforeValidator(_upper)] = "POST"
        """HTTP method of every request."""
        headers: dict[str, str] = {}
        """Extra request headers (e.g. ``Authorization: "Bearer ${WEBHOOK_TOKEN}"``); a ``Content-Type``
        here replaces ``application/json``. The headers the sink computes cannot be set."""
        batch_size: int = Field(100, ge=1, le=100_000)
        """Most events per request; a larger pipeline batch is split. 1: the body is the bare event
        envelope; above 1: the batch wrapper, even for a single event."""
        batch_timeout: BatchTimeoutLater = None
        """The reference's per-output batch wait; refused until built: ``batching.max_wait`` decides it."""
        timeout: Duration = Field(30.0, gt=0)
        """Limit on each request, from connecting to reading the response; then it fails as ``timeout``."""
        tls: TlsOptions = TlsOptions()
        """TLS for ``https://`` URLs."""
        secret: SecretStr | None = Field(None, min_length=1,
                                         validation_alias=AliasChoices("secret", "signing_secret"))
        """Key of the ``X-Savegress-Signature`` HMAC-SHA256 (alias ``signing_secret``); unset: unsigned."""
        retry: RetryOptions = RetryOptions()
        """Retry policy for this output, laid over the profile's ``retry``."""
        compress: bool = False
        """Compress bodies with the profile's compressor (``compression.*``), naming it in
        ``Content-Encoding`` (``lz4`` or ``zstd``: the receiver must decode them, hence off by default)."""

        @field_validator("url")
        @classmethod
        def _http_url(cls, url: str) -> str:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url {url!r} must be http://host/... or https://host/...")
            if parts.username is not None or parts.password is not None:
                raise ValueError("url may not hold credentials; send them in headers (e.g. Authorization)")
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
            return url

        @field_validator("headers")
        @classmethod
        def _plain_headers(cls, headers: dict[str, str]) -> dict[str, str]:
            for header, value in headers.items():
                if not _TOKEN.fullmatch(header):
                    raise ValueError(f"{header!r} is not a valid header name")
                if header.lower() in _RESERVED_HEADERS:
                    raise ValueError(f"{header} is set by the sink")
                if any(c in value for c in "\r\n\0") or not value.isascii():
                    raise ValueError(f"the value of {header} must be ASCII without line breaks")
            return headers

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._client: _Client | None = None

    def open(self, context: Context) -> None:
        cfg = self.config
        url = urlsplit(cfg.url)
        self._target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._client = _Client(url.scheme, url.hostname or "", url.port, cfg.timeout,
                               _ssl_context(cfg.tls) if url.scheme == "https" else None)
        self._compressor: Compressor | None = context.compressor if cfg.compress else None
        self._key = cfg.secret.get_secret_value().encode() if cfg.secret else None
        typed = any(header.lower() == "content-type" for header in cfg.headers)
        self._headers = ({} if typed else {"Content-Type": "application/json"}) | cfg.headers

    def send(self, batch: Batch, done: DeliveryCallback) -> None:
        count = len(batch)
        step = self.config.batch_size
        rejected: list[int] = []
        reasons: list[str] = []
        for start in range(0, count, step):
            stop = min(start + step, count)
            failure = self._post(batch, start, stop)
            if failure is None:
                continue
            reasons.append(failure.reason)
            if failure.status is Status.REJECTED:
                rejected.extend(range(start, stop))
                continue
            done(_partial(count, rejected + list(range(start, count)), Status.ERRORED, reasons, failure.retry_after_s))
            return
        done(_partial(count, rejected, Status.REJECTED, reasons, None) if rejected else Outcome(Status.DELIVERED))

    @classmethod
    def check_profile(cls, config: ComponentConfig, profile: Any) -> list[str]:
        """``send`` blocks for its requests: the worst case must stay under the stall detector."""
        batching = profile.batching
        largest = max(batching.max_size, batching.adaptive_config.max_size if batching.adaptive else 1)
        requests = math.ceil(largest / config.batch_size)
        worst = config.timeout * requests
        heartbeat = profile.gateway.heartbeat_timeout
        if worst < heartbeat:
            return []
        return [f"output.timeout: {config.timeout:g}s per request x {requests} request(s) per batch of {largest} "
                f"can reach gateway.heartbeat_timeout ({heartbeat:g}s), and the worker waiting on the webhook "
                f"would be killed as stalled; lower output.timeout or batching.max_size, or raise "
                f"gateway.heartbeat_timeout"]

    def retry_overrides(self) -> dict[str, Any]:
        """The ``retry.*`` values this output sets, as keys of the profile's ``retry`` section.

        The pipeline owns retries, so it applies them: ``profile.retry.model_copy(update=...)``.
        ``delay`` becomes ``initial_delay`` = ``max_delay`` = delay with ``multiplier`` 1.
        """
        retry = self.config.retry
        changes = retry.model_dump(exclude_none=True, exclude={"delay"})
        if retry.delay is not None:
            changes.update(initial_delay=retry.delay, max_delay=retry.delay, multiplier=1.0)
        return changes

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # ------------------------------------------------------------------ one request

    def _post(self, batch: Batch, start: int, stop: int) -> Outcome | None:
        """Send events ``start..stop`` in one request; None when delivered, else the failure."""
        if self.config.batch_size == 1:
            body, event_id = batch.payloads[start], batch.ids[start]
        else:
            event_id = f"batch-{uuid.uuid4().hex}"
            head = orjson.dumps({"batch_id": event_id, "batch_size": stop - start, "batch_timestamp": now_iso()})
            body = head[:-1] + b',"events":[' + b",".join(batch.payloads[start:stop]) + b"]}"
        headers = dict(self._headers)
        if self._compressor is not None:
            compressed = self._compressor.compress(body)
            if compressed.encoding != "identity":
                body = compressed.data
                headers["Content-Encoding"] = compressed.encoding
        headers["X-Savegress-Event-ID"] = event_id
        headers["X-Savegress-Timestamp"] = str(int(time.time()))
        if self._key is not None:
            headers["X-Savegress-Signature"] = "sha256=" + hmac.new(self._key, body, hashlib.sha256).hexdigest()
        assert self._client is not None, "open() first"
        try:
            reply = self._client.exchange(self.config.method, self._target, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(Status.ERRORED, f"webhook delivery failed: {_describe(exc)}")
        return reply.failure()


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    phrase: str
    headers: http.client.HTTPMessage
    body: bytes

    def failure(self) -> Outcome | None:
        """None for 2xx; ERRORED for 408, 429 and 5xx; REJECTED for the rest."""
        if 200 <= self.status < 300:
            return None
        reason = f"webhook delivery failed: {self.status} {self.phrase}".rstrip()
        if location := self.headers.get("Location"):
            reason += f" (Location: {location})"
        if snippet := self.body[:REASON_BODY_BYTES].decode("utf-8", "replace").strip():
            reason += f": {snippet}"
        if self.status in (408, 429) or self.status >= 500:
            return Outcome(Status.ERRORED, reason, retry_after_s=_retry_after(self.headers.get("Retry-After")))
        return Outcome(Status.REJECTED, reason)


class _Client:
    """One keep-alive HTTP/1.1 connection to the webhook's host (stdlib ``http.client``)."""

    def __init__(self, scheme: str, host: str, port: int | None, timeout: float,
                 context: ssl.SSLContext | None) -> None:
        self._timeout = timeout
        self._conn = (http.client.HTTPSConnection(host, port, timeout=timeout, context=context) if scheme == "https"
                      else http.client.HTTPConnection(host, port, timeout=timeout))

    def exchange(self, method: str, target: str, body: bytes, headers: dict[str, str]) -> _Reply:
        """One request and its response, within about ``timeout``; raises OSError or HTTPException.

        On any error the connection is closed (the next request opens a new one); a request that
        failed on a kept-alive connection with :data:`_STALE` is repeated once, fresh.
        """
        deadline = time.monotonic() + self._timeout
        while True:
            fresh = self._conn.sock is None
            try:
                return self._exchange(method, target, body, headers, deadline)
            except _STALE:
                self.close()
                if fresh:
                    raise
            except BaseException:
                self.close()
                raise

    def _exchange(self, method: str, target: str, body: bytes, headers: dict[str, str], deadline: float) -> _Reply:
        conn = self._conn
        conn.timeout = self._remaining(deadline)  # for connecting
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        conn.request(method, target, body, headers)
        assert conn.sock is not None
        conn.sock.settimeout(self._remaining(deadline))
        response = conn.getresponse()
        if conn.sock is not None:  # None when the response closes the connection (it keeps its own file)
            conn.sock.settimeout(self._remaining(deadline))
        data = response.read(_DRAIN_LIMIT)
        if not response.isclosed():  # more than we care to read: drop the connection instead
            response.close()
            self.close()
        return _Reply(response.status, response.reason, response.headers, data)

    @staticmethod
    def _remaining(deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        return remaining

    def close(self) -> None:
        self._conn.close()


def _ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _partial(count: int, failed: list[int], status: Status, reasons: list[str], retry_after_s: float | None) -> Outcome:
    """The outcome of a send whose events ``failed`` (indices, ascending) failed with ``status``."""
    reason = "; ".join(dict.fromkeys(reasons))
    if len(failed) == count:
        return Outcome(status, reason, retry_after_s=retry_after_s)
    return Outcome(Status.DELIVERED, reason, failed=failed, failed_status=status, retry_after_s=retry_after_s)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(WebhookSink)
