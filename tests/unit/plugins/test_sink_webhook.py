"""The ``webhook`` sink against a real HTTP(S) server: bodies, headers, signing, compression,
splitting, status mapping, timeouts, connection handling, TLS and the per-output retry block."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import orjson
import pytest

from savegress_gw import Batch, Outcome, Status
from savegress_gw.compression import decompress
from savegress_gw.envelope import encode
from savegress_gw.errors import ProfileError
from savegress_gw.profile.settings import RetrySettings
from savegress_gw.testing import build_sink, instantiate, registry_of, send_one, validated
from savegress_gw_plugins.compressors import lz4 as lz4_module
from savegress_gw_plugins.compressors import zstd as zstd_module
from savegress_gw_plugins.sinks import webhook as webhook_module
from savegress_gw_plugins.sinks.webhook import WebhookSink

MODULES = (webhook_module, lz4_module, zstd_module)
NO_COMPRESSION = {"algorithm": "lz4", "enabled": False}


# --------------------------------------------------------------------------------------------- server


@dataclass
class Reply:
    """What the server answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False
    """Answer nothing until the test ends (a server that stopped responding)."""
    close: bool = False
    """Close the connection after answering, without announcing it (an idle keep-alive timeout)."""


@dataclass
class Request:
    method: str
    path: str
    headers: Message
    body: bytes


class Server(http.server.ThreadingHTTPServer):
    """Records every request and answers from ``script`` (then 200 ``ok``), on 127.0.0.1."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tls = tls
        self.requests: list[Request] = []
        self.script: deque[Reply] = deque()
        self.release = threading.Event()
        self.connections = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        self.connections += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, address

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}/events?source=gw"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(Request(self.command, self.path, self.headers, body))
        reply = self.server.script.popleft() if self.server.script else Reply()
        if reply.hang:
            self.server.release.wait(30)
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)
        self.close_connection = reply.close

    do_POST = do_PUT = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(server: Server) -> Iterator[Server]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    with serve(Server()) as running:
        yield running


# ---------------------------------------------------------------------------------------------- sink


def batch(first: int, count: int) -> Batch:
    return encode([
        {"id": f"evt-{i}", "source": "test", "schema": "public", "table": "users", "operation": "INSERT",
         "timestamp": "2025-01-15T10:30:00.000000Z", "after": {"id": i, "name": "x" * 40}}
        for i in range(first, first + count)
    ], 0)


def open_sink(url: str, compression: dict[str, Any] = NO_COMPRESSION, **output: Any) -> WebhookSink:
    """Build the sink from a profile, opened with the profile's compressor as the worker does."""
    output = {"compress": True, **output}  # the tests that use a compressor expect it applied
    # Tiny batch sizes split a batch into many requests; keep their worst case under the stall detector.
    sink = build_sink({"output": {"type": "webhook", "url": url, **output}, "compression": compression,
                       "gateway": {"heartbeat_timeout": "1h"}}, *MODULES)
    assert isinstance(sink, WebhookSink)
    return sink


def events_of(request: Request) -> list[bytes]:
    """The events of a batch-wrapper body, re-encoded as the sink's payloads are."""
    return [orjson.dumps(event) for event in orjson.loads(request.body)["events"]]


@contextmanager
def refused_url() -> Iterator[str]:
    """A URL on a port that is bound but not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/events"


# -------------------------------------------------------------------------------------- body, headers


def test_single_events_are_sent_as_bare_envelopes(server: Server) -> None:
    sink = open_sink(server.url, batch_size=1)
    events = batch(0, 3)
    assert send_one(sink, events) == Outcome(Status.DELIVERED)
    sink.close()
    sink.close()
    assert [r.body for r in server.requests] == events.payloads
    assert [r.headers["X-Savegress-Event-ID"] for r in server.requests] == events.ids
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/events?source=gw")] * 3
    assert server.connections == 1  # kept alive


def test_batches_are_sent_in_the_batch_wrapper(server: Server) -> None:
    sink = open_sink(server.url)
    events = batch(0, 5)
    before = time.time()
    assert send_one(sink, events) == Outcome(Status.DELIVERED)
    sink.close()
    [request] = server.requests
    body = orjson.loads(request.body)
    assert list(body) == ["batch_id", "batch_size", "batch_timestamp", "events"]
    assert body["batch_id"].startswith("batch-") and len(body["batch_id"]) == len("batch-") + 32
    assert body["batch_size"] == 5 and body["batch_timestamp"].endswith("Z")
    assert events_of(request) == events.payloads
    assert request.headers["X-Savegress-Event-ID"] == body["batch_id"]
    assert request.headers["Content-Type"] == "application/json"
    assert before - 1 <= int(request.headers["X-Savegress-Timestamp"]) <= time.time()
    assert "X-Savegress-Signature" not in request.headers and "Content-Encoding" not in request.headers


def test_a_large_batch_is_split_into_requests_in_order(server: Server) -> None:
    sink = open_sink(server.url, batch_size=100)
    events = batch(0, 250)
    assert send_one(sink, events) == Outcome(Status.DELIVERED)
    sink.close()
    assert [orjson.loads(r.body)["batch_size"] for r in server.requests] == [100, 100, 50]
    assert [e for r in server.requests for e in events_of(r)] == events.payloads
    assert len({r.headers["X-Savegress-Event-ID"] for r in server.requests}) == 3


def test_user_headers_and_method(server: Server) -> None:
    sink = open_sink(server.url, method="put", headers={"Authorization": "Bearer t0k", "content-type": "text/plain"})
    send_one(sink, batch(0, 1))
    sink.close()
    [request] = server.requests
    assert request.method == "PUT"
    assert request.headers["Authorization"] == "Bearer t0k"
    assert request.headers.get_all("Content-Type") == ["text/plain"]


def test_signature_is_an_hmac_of_the_body(server: Server) -> None:
    sink = open_sink(server.url, signing_secret="s3cret")
    send_one(sink, batch(0, 2))
    sink.close()
    [request] = server.requests
    expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Savegress-Signature"], expected)


@pytest.mark.parametrize("algorithm", ["lz4", "zstd"])
def test_compressed_bodies_are_labelled_and_signed_as_sent(server: Server, algorithm: str) -> None:
    sink = open_sink(server.url, compression={"algorithm": algorithm, "min_size": 0}, secret="k")
    events = batch(0, 20)
    assert send_one(sink, events) == Outcome(Status.DELIVERED)
    sink.close()
    [request] = server.requests
    assert request.headers["Content-Encoding"] == algorithm
    expected = "sha256=" + hmac.new(b"k", request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Savegress-Signature"], expected)
    plain = decompress(request.body, algorithm)
    assert len(request.body) < len(plain)
    assert [orjson.dumps(e) for e in orjson.loads(plain)["events"]] == events.payloads


@pytest.mark.parametrize(("compression", "output"), [
    ({"algorithm": "lz4", "min_size": 0}, {"compress": False}),
    ({"algorithm": "lz4", "min_size": "1MB"}, {}),  # the compressor answers identity
])
def test_bodies_stay_plain_without_compression(server: Server, compression: dict[str, Any],
                                               output: dict[str, Any]) -> None:
    sink = open_sink(server.url, compression=compression, **output)
    send_one(sink, batch(0, 20))
    sink.close()
    [request] = server.requests
    assert "Content-Encoding" not in request.headers
    assert orjson.loads(request.body)["batch_size"] == 20


# ------------------------------------------------------------------------------------------ outcomes


def test_503_is_errored_with_the_retry_after_hint(server: Server) -> None:
    server.script.append(Reply(503, {"Retry-After": "2"}, b"down for maintenance"))
    sink = open_sink(server.url)
    outcome = send_one(sink, batch(0, 3))
    assert outcome == Outcome(Status.ERRORED, "webhook delivery failed: 503 Service Unavailable: down for maintenance",
                              retry_after_s=2.0)
    assert send_one(sink, batch(0, 3)) == Outcome(Status.DELIVERED)
    sink.close()


@pytest.mark.parametrize(("header", "seconds"), [("0.5", 0.5), ("-3", 0.0), ("soon", None), ("nan", None)])
def test_retry_after_hints_that_are_not_plain(server: Server, header: str, seconds: float | None) -> None:
    server.script.append(Reply(503, {"Retry-After": header}))
    sink = open_sink(server.url)
    outcome = send_one(sink, batch(0, 1))
    sink.close()
    assert outcome.status is Status.ERRORED and outcome.retry_after_s == seconds


def test_429_with_an_http_date_retry_after(server: Server) -> None:
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    server.script.append(Reply(429, {"Retry-After": when}, b""))
    sink = open_sink(server.url)
    outcome = send_one(sink, batch(0, 1))
    sink.close()
    assert outcome.status is Status.ERRORED and outcome.reason == "webhook delivery failed: 429 Too Many Requests"
    assert outcome.retry_after_s is not None and 8 <= outcome.retry_after_s <= 10


def test_400_is_rejected_with_the_start_of_the_response(server: Server) -> None:
    server.script.append(Reply(400, body=b"bad event: " + b"x" * 500))
    sink = open_sink(server.url)
    outcome = send_one(sink, batch(0, 3))
    sink.close()
    assert outcome.status is Status.REJECTED and outcome.failed == [] and outcome.retry_after_s is None
    assert outcome.reason == "webhook delivery failed: 400 Bad Request: bad event: " + "x" * 189


def test_a_redirect_is_rejected_naming_the_location(server: Server) -> None:
    server.script.append(Reply(301, {"Location": "https://elsewhere/events"}, b""))
    sink = open_sink(server.url)
    outcome = send_one(sink, batch(0, 1))
    sink.close()
    assert outcome == Outcome(Status.REJECTED,
                              "webhook delivery failed: 301 Moved Permanently (Location: https://elsewhere/events)")


def test_a_failure_in_the_second_request_fails_the_rest(server: Server) -> None:
    server.script.extend([Reply(), Reply(503)])
    sink = open_sink(server.url, batch_size=100)
    outcome = send_one(sink, batch(0, 250))
    sink.close()
    assert outcome.status is Status.DELIVERED and outcome.failed_status is Status.ERRORED
    assert outcome.failed == list(range(100, 250))
    assert outcome.reason == "webhook delivery failed: 503 Service Unavailable: ok"
    assert len(server.requests) == 2


def test_a_rejected_request_does_not_stop_the_next_ones(server: Server) -> None:
    server.script.extend([Reply(), Reply(413, body=b"too large")])
    sink = open_sink(server.url, batch_size=100)
    events = batch(0, 250)
    outcome = send_one(sink, events)
    sink.close()
    assert outcome == Outcome(Status.DELIVERED, "webhook delivery failed: 413 Request Entity Too Large: too large",
                              failed=list(range(100, 200)), failed_status=Status.REJECTED)
    assert [e for r in server.requests for e in events_of(r)] == events.payloads


def test_an_error_after_a_rejection_fails_both_as_errored(server: Server) -> None:
    server.script.extend([Reply(), Reply(400, body=b"no"), Reply(500, body=b"oops")])
    sink = open_sink(server.url, batch_size=2)
    outcome = send_one(sink, batch(0, 8))
    sink.close()
    assert outcome == Outcome(Status.DELIVERED, "webhook delivery failed: 400 Bad Request: no; "
                              "webhook delivery failed: 500 Internal Server Error: oops",
                              failed=[2, 3, 4, 5, 6, 7], failed_status=Status.ERRORED)
    assert len(server.requests) == 3


def test_every_request_rejected_rejects_the_whole_batch(server: Server) -> None:
    server.script.extend([Reply(422, body=b"no")] * 3)
    sink = open_sink(server.url, batch_size=2)
    outcome = send_one(sink, batch(0, 5))
    sink.close()
    assert outcome == Outcome(Status.REJECTED, "webhook delivery failed: 422 Unprocessable Entity: no")


def test_a_timeout_is_errored_within_the_timeout(server: Server) -> None:
    server.script.append(Reply(hang=True))
    sink = open_sink(server.url, timeout="300ms")
    started = time.monotonic()
    outcome = send_one(sink, batch(0, 3))
    elapsed = time.monotonic() - started
    assert outcome == Outcome(Status.ERRORED, "webhook delivery failed: timeout")
    assert 0.25 <= elapsed < 1.0
    assert send_one(sink, batch(0, 3)) == Outcome(Status.DELIVERED)  # on a new connection
    sink.close()
    assert server.connections == 2


def test_connection_refused_is_errored() -> None:
    with refused_url() as url:
        sink = open_sink(url)
        outcome = send_one(sink, batch(0, 3))
        sink.close()
        assert outcome.status is Status.ERRORED and outcome.failed == []
        assert outcome.reason.startswith("webhook delivery failed: ConnectionRefusedError")


def test_a_connection_the_server_closed_while_idle_is_reopened(server: Server) -> None:
    server.script.append(Reply(close=True))
    sink = open_sink(server.url)
    assert send_one(sink, batch(0, 2)) == Outcome(Status.DELIVERED)
    time.sleep(0.1)
    assert send_one(sink, batch(2, 2)) == Outcome(Status.DELIVERED)
    sink.close()
    assert [e for r in server.requests for e in events_of(r)] == batch(0, 4).payloads
    assert server.connections == 2


def test_an_empty_batch_is_delivered_without_a_request(server: Server) -> None:
    sink = open_sink(server.url)
    assert send_one(sink, Batch.empty()) == Outcome(Status.DELIVERED)
    sink.close()
    assert server.requests == []


# ----------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@contextmanager
def https_server(certificate: tuple[Path, Path], client_ca: Path | None = None) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    with serve(Server(tls=context)) as running:
        yield running


def test_tls_skip_verify_accepts_a_self_signed_certificate(certificate: tuple[Path, Path]) -> None:
    with https_server(certificate) as server:
        sink = open_sink(server.url, tls={"skip_verify": True})
        assert send_one(sink, batch(0, 2)) == Outcome(Status.DELIVERED)
        sink.close()
        assert events_of(server.requests[0]) == batch(0, 2).payloads


def test_tls_verifies_the_server_by_default(certificate: tuple[Path, Path]) -> None:
    with https_server(certificate) as server:
        sink = open_sink(server.url)
        outcome = send_one(sink, batch(0, 2))
        sink.close()
        assert outcome.status is Status.ERRORED and "CERTIFICATE_VERIFY_FAILED" in outcome.reason
        assert server.requests == []


def test_tls_with_ca_file_and_a_client_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with https_server(certificate, client_ca=cert) as server:
        sink = open_sink(server.url, tls={"ca_file": str(cert), "cert_file": str(cert), "key_file": str(key)})
        assert send_one(sink, batch(0, 2)) == Outcome(Status.DELIVERED)
        sink.close()
        assert len(server.requests) == 1


# -------------------------------------------------------------------------------------------- config


def webhook_config(**output: Any) -> Any:
    return validated({"output": {"type": "webhook", "url": "https://hooks.example/events", **output}},
                     webhook_module).output


def test_http_is_an_alias_and_defaults_follow_the_reference() -> None:
    output = validated({"output": {"type": "http", "url": "http://x/e"}}, webhook_module).output
    assert output.type == "webhook"
    assert (output.method, output.batch_size, output.timeout, output.compress, output.secret) == (
        "POST", 100, 30.0, False, None)
    assert output.tls.skip_verify is False


def test_retry_overrides_name_only_what_the_output_sets() -> None:
    registry = registry_of(webhook_module)

    def overrides(retry: dict[str, Any] | None) -> dict[str, Any]:
        output = {"type": "webhook", "url": "http://x/e"} | ({"retry": retry} if retry is not None else {})
        sink = instantiate("sink", validated({"output": output}, webhook_module), registry)
        assert isinstance(sink, WebhookSink)
        return sink.retry_overrides()

    assert overrides(None) == {}
    assert overrides({"max_attempts": 3, "initial_delay": "200ms", "enabled": True}) == {
        "enabled": True, "max_attempts": 3, "initial_delay": 0.2}
    fixed = overrides({"delay": "1s", "max_attempts": 4})
    assert fixed == {"max_attempts": 4, "initial_delay": 1.0, "max_delay": 1.0, "multiplier": 1.0}
    assert RetrySettings().model_copy(update=fixed).model_dump() == RetrySettings(**fixed).model_dump()


@pytest.mark.parametrize(("output", "problem"), [
    ({"url": "ftp://x/e"}, "must be http://host/"),
    ({"url": "https://user:pw@x/e"}, "may not hold credentials"),
    ({"url": "http://x:99999/e"}, "output.url"),
    ({"headers": {"Content-Length": "1"}}, "Content-Length is set by the sink"),
    ({"headers": {"X-Savegress-Signature": "x"}}, "is set by the sink"),
    ({"headers": {"X-Evil": "a\r\nHost: b"}}, "without line breaks"),
    ({"headers": {"Bad Name": "a"}}, "not a valid header name"),
    ({"method": "GET"}, "output.method"),
    ({"retry": {"delay": "1s", "initial_delay": "2s"}}, "excludes retry.initial_delay"),
    ({"tls": {"key_file": "k.pem"}}, "tls.key_file needs tls.cert_file"),
    ({"secret": ""}, "output.secret"),
    ({"batch_size": 0}, "output.batch_size"),
    ({"batch_timeout": "1s"}, "not implemented yet: output.batch_timeout"),
])
def test_invalid_settings_are_refused(output: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProfileError, match=problem.replace(".", r"\.").replace("?", r"\?")):
        webhook_config(**output)


def test_the_url_is_required() -> None:
    with pytest.raises(ProfileError, match=r"output\.url"):
        validated({"output": {"type": "webhook"}}, webhook_module)


def test_a_timeout_that_could_outlast_the_stall_detector_is_refused() -> None:
    with pytest.raises(ProfileError, match=r"output.timeout: 30s per request x 10 request\(s\) per batch of 1000"):
        validated({"output": {"type": "webhook", "url": "http://x/e"}, "batching": {"max_size": 1000}},
                  webhook_module)
    validated({"output": {"type": "webhook", "url": "http://x/e", "timeout": "5s"}, "batching": {"max_size": 1000}},
              webhook_module)
