"""The sink circuit breaker: closed → open → half-open → closed, and its place in the pipeline."""

from __future__ import annotations

from savegress_gw.circuit import CircuitBreaker, State
from savegress_gw.profile.settings import CircuitBreakerSettings
from tests.harness.pipeline import MemorySink, errored, ids

SETTINGS = CircuitBreakerSettings(failure_threshold=3, success_threshold=2, timeout=10.0, half_open_requests=1)


def test_opens_after_consecutive_failures_and_probes_after_the_timeout() -> None:
    breaker = CircuitBreaker(SETTINGS)
    for now in (1.0, 2.0):
        breaker.failed(now)
        assert breaker.state is State.CLOSED
    breaker.succeeded(2.5)  # a success resets the consecutive count
    for now in (3.0, 4.0, 5.0):
        breaker.failed(now)
    assert breaker.state is State.OPEN and breaker.opens == 1
    assert not breaker.allow(14.9)
    assert breaker.allow(15.0) and breaker.state is State.HALF_OPEN
    breaker.sending()
    assert not breaker.allow(15.1), "only half_open_requests probes in flight"
    breaker.succeeded(15.2)
    assert breaker.state is State.HALF_OPEN and breaker.allow(15.3)
    breaker.sending()
    breaker.succeeded(15.4)
    assert breaker.state is State.CLOSED


def test_a_failed_probe_opens_it_again() -> None:
    breaker = CircuitBreaker(SETTINGS)
    for now in (1.0, 2.0, 3.0):
        breaker.failed(now)
    assert breaker.allow(13.0)
    breaker.sending()
    breaker.failed(13.5)
    assert breaker.state is State.OPEN and breaker.opens == 2
    assert not breaker.allow(20.0) and breaker.allow(23.5)


def test_adaptive_mode_opens_on_the_error_rate() -> None:
    settings = CircuitBreakerSettings(failure_threshold=1000, adaptive={"enabled": True, "min_samples": 10,
                                                                        "error_rate_threshold": 0.5})
    breaker = CircuitBreaker(settings)
    for i in range(10):
        (breaker.failed if i % 2 else breaker.succeeded)(float(i))
    assert breaker.state is State.OPEN


def test_disabled_breaker_always_allows() -> None:
    breaker = CircuitBreaker(CircuitBreakerSettings(enabled=False, failure_threshold=1))
    breaker.failed(0.0)
    assert breaker.allow(0.1)


def test_an_open_breaker_stops_every_send_until_it_probes(make_world) -> None:
    sink = MemorySink(script={n: errored("503 Service Unavailable") for n in range(1, 4)})
    world = make_world(sink)
    world.pipeline.breaker = CircuitBreaker(SETTINGS)
    world.write(4)
    for now in (1.0, 2.0, 3.0, 4.0, 5.0):  # retries every ~ms: three failures open it
        world.step(now)
    assert world.pipeline.breaker.state is State.OPEN
    sends = len(sink.sends)
    assert sends == 3
    world.write(4)
    world.step(8.0, times=5)
    assert len(sink.sends) == sends, "nothing is sent while open, retries and new batches alike"
    assert world.pipeline.idle_deadline() <= 3.0 + SETTINGS.timeout + 1e-9
    world.step(14.0)  # half-open: one probe (the retry) succeeds
    world.step(14.1)
    world.step(14.2)
    assert sink.delivered == ids(0, 8)
    assert world.pipeline.breaker.state is State.CLOSED
    assert world.metric("circuit_breaker_state") == float(State.CLOSED)
