"""The ``http`` source: request formats, answers, and 202 only once the core committed."""

from __future__ import annotations

import gzip
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import orjson
import pytest
import requests
import zstandard

from savegress_gw.testing import build
from savegress_gw_plugins.sources import http as http_module
from savegress_gw_plugins.sources.http import HttpSource

EVENT = {"operation": "insert", "table": "public.users", "after": {"id": 1, "name": "ada"}}
NDJSON = {"Content-Type": "application/x-ndjson"}


def events(n: int) -> list[dict[str, Any]]:
    return [{**EVENT, "after": {"id": i}} for i in range(n)]


def ndjson(items: list[Any]) -> bytes:
    return b"\n".join(orjson.dumps(item) for item in items) + b"\n"


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Core:
    """Plays the core's source loop in a thread: ``read()``, then ``commit()`` what it read.

    While ``hold`` is set, batches are read but their commit waits until it is cleared.
    """

    def __init__(self, source: HttpSource) -> None:
        self.source = source
        self.batches: list[Any] = []
        self.hold = threading.Event()
        self._released = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-core", daemon=True)
        self._thread.start()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for batch in self.batches for event in batch.events]

    def release(self) -> None:
        self.hold.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self.source.read(1000, 0.05)
            if batch is None:
                continue
            self.batches.append(batch)
            while self.hold.is_set() and not self._stop.is_set():
                time.sleep(0.01)
            if not self._stop.is_set():
                self.source.commit(batch.position)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive()


@pytest.fixture
def make_source() -> Iterator[Callable[..., HttpSource]]:
    opened: list[HttpSource] = []

    def make(**settings: Any) -> HttpSource:
        source, _ = build("source", {"source": {"type": "http", "listen": "127.0.0.1:0", **settings}}, http_module)
        assert isinstance(source, HttpSource)
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


@pytest.fixture
def source(make_source: Callable[..., HttpSource]) -> HttpSource:
    return make_source()


@pytest.fixture
def core(source: HttpSource) -> Iterator[Core]:
    fake = Core(source)
    yield fake
    fake.stop()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def post(source: HttpSource, body: Any = None, *, data: bytes | None = None, **kwargs: Any) -> requests.Response:
    if data is None:
        data = orjson.dumps(body)
        kwargs.setdefault("headers", {"Content-Type": "application/json"})
    return requests.post(f"{source.url}/v1/events", data=data, timeout=10, **kwargs)


# ------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name, count, send", [
    ("object", 1, lambda s: post(s, EVENT)),
    ("array", 3, lambda s: post(s, events(3))),
    ("ndjson", 4, lambda s: post(s, data=b"\n" + ndjson(events(2)) + b"\r\n\n" + ndjson(events(2)), headers=NDJSON)),
    ("gzip", 5, lambda s: post(s, data=gzip.compress(ndjson(events(5))),
                               headers={**NDJSON, "Content-Encoding": "gzip"})),
    ("zstd", 6, lambda s: post(s, data=zstandard.ZstdCompressor().compress(orjson.dumps(events(6))),
                               headers={"Content-Type": "application/json", "Content-Encoding": "zstd"})),
])
def test_accepted_formats(source: HttpSource, core: Core, name: str, count: int,
                          send: Callable[[HttpSource], requests.Response]) -> None:
    response = send(source)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": count}
    assert len(core.events) == count
    for event in core.events:
        assert event["operation"] == "INSERT" and event["table"] == "public.users"
        assert event["source"] == "http" and event["id"].startswith("evt-") and event["timestamp"].endswith("Z")
    assert (source.requests_total, source.events_accepted, source.rejected_total) == (1, count, {})


def test_client_ids_and_timestamps_are_kept(source: HttpSource, core: Core) -> None:
    sent = {**EVENT, "id": "e-1", "timestamp": "2024-05-01T12:00:00Z"}
    assert post(source, sent).status_code == 202
    assert core.events[0]["id"] == "e-1" and core.events[0]["timestamp"] == "2024-05-01T12:00:00Z"


# -------------------------------------------------------------------------- commit = 202


def test_202_only_after_commit(source: HttpSource, pool: ThreadPoolExecutor) -> None:
    first = pool.submit(post, source, events(2))
    wait_until(lambda: source.events_accepted == 2)  # first gets sequence number 1
    second = pool.submit(post, source, EVENT)
    wait_until(lambda: source.events_accepted == 3)
    batches = [source.read(1000, 1.0), source.read(1000, 1.0)]  # one request per batch
    assert [(len(b.events), b.position) for b in batches] == [(2, 1), (1, 2)]
    time.sleep(0.2)
    assert not first.done() and not second.done()  # read but not committed: still pending
    source.commit(1)
    assert first.result(5).status_code == 202
    time.sleep(0.2)
    assert not second.done()
    source.commit(2)
    assert second.result(5).json() == {"accepted": 1}


def test_events_dropped_by_policy_are_reported_to_their_request(source: HttpSource, pool: ThreadPoolExecutor) -> None:
    response = pool.submit(post, source, events(5))
    batch = source.read(1000, 5.0)
    assert batch is not None
    source.commit(batch.position, dropped=2)
    assert response.result(5).json() == {"accepted": 3, "dropped": 2}


def test_read_keeps_requests_whole(source: HttpSource, pool: ThreadPoolExecutor) -> None:
    big = pool.submit(post, source, events(5))
    wait_until(lambda: source.events_accepted == 5)
    small = pool.submit(post, source, EVENT)
    wait_until(lambda: source.events_accepted == 6)
    first = source.read(2, 1.0)  # a request larger than max_events comes alone, never split
    assert first is not None and (len(first.events), first.position) == (5, 1)
    second = source.read(2, 1.0)
    assert second is not None and (len(second.events), second.position) == (1, 2)
    assert source.read(2, 0.05) is None
    source.commit(first.position)
    source.commit(second.position)
    assert [big.result(5).status_code, small.result(5).status_code] == [202, 202]


def test_read_waits_at_most_timeout(source: HttpSource) -> None:
    started = time.monotonic()
    assert source.read(100, 0.2) is None
    assert 0.15 < time.monotonic() - started < 1.0


def test_ack_timeout_is_504(make_source: Callable[..., HttpSource]) -> None:
    source = make_source(ack_timeout="200ms")
    response = post(source, EVENT)
    assert response.status_code == 504
    assert "may still be delivered" in response.json()["reason"]
    batch = source.read(100, 1.0)  # the events stay queued: at-least-once
    assert batch is not None and len(batch.events) == 1
    source.commit(batch.position)  # a late commit of an answered request is harmless
    assert source.rejected_total == {504: 1}


# ------------------------------------------------------------------------------ rejects


def test_malformed_ndjson_line_names_the_line_and_queues_nothing(source: HttpSource) -> None:
    body = ndjson(events(2)) + b'{"operation": "insert", "table": \n' + ndjson(events(1))
    response = post(source, data=body, headers=NDJSON)
    assert response.status_code == 400
    assert response.json()["line"] == 3 and response.json()["error"] == "invalid JSON"
    assert source.read(100, 0.1) is None
    assert source.events_accepted == 0 and source.rejected_total == {400: 1}


def test_invalid_event_is_400_with_the_reason(source: HttpSource) -> None:
    response = post(source, [EVENT, {**EVENT, "operation": "upsert"}])
    assert response.status_code == 400
    body = response.json()
    assert body["line"] == 2 and body["error"] == "invalid event"
    assert "operation 'upsert' is not one of" in body["reason"]
    assert source.read(100, 0.1) is None


@pytest.mark.parametrize("data, headers, reason", [
    (b" ", {}, "the body is empty"),
    (b"[1]", {}, "must be a JSON object"),
    (b"not gzip", {"Content-Encoding": "gzip"}, "not valid gzip"),
    (gzip.compress(orjson.dumps(EVENT))[:-6], {"Content-Encoding": "gzip"}, "not valid gzip"),
    (zstandard.ZstdCompressor().compress(orjson.dumps([EVENT] * 50))[:-4], {"Content-Encoding": "zstd"}, "truncated"),
])
def test_bad_bodies_are_400(source: HttpSource, data: bytes, headers: dict[str, str], reason: str) -> None:
    response = post(source, data=data, headers=headers)
    assert response.status_code == 400
    assert response.json()["line"] == 1 and reason in response.json()["reason"]


def test_unknown_encoding_is_415(source: HttpSource) -> None:
    assert post(source, data=orjson.dumps(EVENT), headers={"Content-Encoding": "br"}).status_code == 415


@pytest.mark.parametrize("data, headers", [
    (orjson.dumps([{**EVENT, "after": {"pad": "x" * 5000}}]), {}),
    (gzip.compress(b" " * 1_000_000 + orjson.dumps(EVENT)), {"Content-Encoding": "gzip"}),
    (zstandard.ZstdCompressor().compress(b" " * 1_000_000 + orjson.dumps(EVENT)), {"Content-Encoding": "zstd"}),
])
def test_too_large_is_413(make_source: Callable[..., HttpSource], data: bytes, headers: dict[str, str]) -> None:
    source = make_source(max_body_size="4KB")
    assert len(data) < 6000  # the bombs are small on the wire
    response = post(source, data=data, headers=headers)
    assert response.status_code == 413 and "max_body_size" in response.json()["reason"]
    assert source.read(100, 0.05) is None


def test_too_many_events_is_413(make_source: Callable[..., HttpSource]) -> None:
    source = make_source(max_batch_events=3)
    response = post(source, events(4))
    assert response.status_code == 413 and "max_batch_events" in response.json()["reason"]


def test_bearer_token(make_source: Callable[..., HttpSource]) -> None:
    source = make_source(auth_token="s3cret")
    core = Core(source)
    try:
        missing = post(source, EVENT)
        wrong = post(source, EVENT, headers={"Authorization": "Bearer nope"})
        right = post(source, EVENT, headers={"Authorization": "Bearer s3cret"})
    finally:
        core.stop()
    assert [missing.status_code, wrong.status_code, right.status_code] == [401, 401, 202]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert len(core.events) == 1 and source.rejected_total == {401: 2}


def test_pause_is_429_until_resume(source: HttpSource, core: Core) -> None:
    source.pause()
    paused = post(source, EVENT)
    assert paused.status_code == 429
    assert int(paused.headers["Retry-After"]) >= 1 and paused.json()["error"] == "too many requests"
    assert requests.get(f"{source.url}/v1/health", timeout=5).json() == {"status": "ok", "paused": True}
    source.resume()
    assert post(source, EVENT).status_code == 202
    assert len(core.events) == 1


def test_full_queue_is_429(make_source: Callable[..., HttpSource], pool: ThreadPoolExecutor) -> None:
    source = make_source(max_queued_events=2, retry_after="1500ms")
    pending = pool.submit(post, source, events(2))
    wait_until(lambda: source.events_accepted == 2)
    full = post(source, EVENT)
    assert full.status_code == 429 and full.headers["Retry-After"] == "2"
    batch = source.read(100, 1.0)
    assert batch is not None
    source.commit(batch.position)
    assert pending.result(5).status_code == 202


def test_health_404_405(source: HttpSource) -> None:
    health = requests.get(f"{source.url}/v1/health", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok", "paused": False}
    missing = requests.post(f"{source.url}/v2/events", data=b"{}", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"] == "not found"
    wrong_method = requests.get(f"{source.url}/v1/events", timeout=5)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]


# -------------------------------------------------------------------------------- lifecycle


def test_close_answers_pending_503_and_stops_the_thread(source: HttpSource, core: Core,
                                                         pool: ThreadPoolExecutor) -> None:
    core.hold.set()
    pending: Future[requests.Response] = pool.submit(post, source, EVENT)
    wait_until(lambda: core.batches)  # read, never committed
    thread = source._thread
    assert thread is not None and thread.is_alive()
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 3.0
    response = pending.result(5)
    assert response.status_code == 503 and response.json()["error"] == "shutting down"
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("http-source")]
    source.close()  # idempotent
    assert source.read(100, 0.05) is None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{source.url}/v1/health", timeout=2)


def test_committed_before_close_is_still_202(source: HttpSource, pool: ThreadPoolExecutor) -> None:
    pending = pool.submit(post, source, EVENT)
    wait_until(lambda: source.events_accepted == 1)
    batch = source.read(100, 1.0)
    assert batch is not None
    source.commit(batch.position)
    source.close()
    assert pending.result(5).status_code == 202


def test_bind_error_names_the_address(source: HttpSource, make_source: Callable[..., HttpSource]) -> None:
    taken = f"127.0.0.1:{source.port}"
    with pytest.raises(OSError, match=f"cannot listen on {taken}"):
        make_source(listen=taken)
    assert not [t for t in threading.enumerate() if t.name == f"http-source {taken}"]


@pytest.mark.parametrize("settings", [{"listen": "8080"}, {"listen": "host:http"}, {"path": "v1/events"},
                                      {"auth_token": ""}, {"max_body_size": 0}])
def test_config_is_checked(settings: dict[str, Any]) -> None:
    from savegress_gw.errors import ProfileError
    from savegress_gw.testing import validated

    with pytest.raises(ProfileError):
        validated({"source": {"type": "http", **settings}}, http_module)
