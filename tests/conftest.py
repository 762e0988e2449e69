"""Shared fixtures. Process and fault tests start real gateways through tests/harness."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.harness.pipeline import World


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the long fault soaks (marked `soak`) instead of skipping them")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long soak: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture()
def make_world() -> Iterator[Callable[..., World]]:
    """Build pipeline test worlds (tests/harness/pipeline.py); their rings are closed afterwards."""
    worlds: list[World] = []

    def make(*args, **kwargs) -> World:
        worlds.append(World(*args, **kwargs))
        return worlds[-1]

    yield make
    for world in worlds:
        world.close()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real 1-node Apache Kafka (KRaft, from Maven Central jars) for the whole session, with a
    PLAINTEXT and a SASL/PLAIN listener. Tests that kill brokers start their own cluster
    (``kafka_cluster3``, or ``tests.harness.kafka.running_cluster``)."""
    from tests.harness.kafka import running_cluster

    with running_cluster(tmp_path_factory.mktemp("kafka"), 1, sasl_plain=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kafka_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A 3-node cluster per test module, for replication and broker-kill tests."""
    from tests.harness.kafka import running_cluster

    with running_cluster(tmp_path_factory.mktemp("kafka3"), 3) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _no_gateway_outlives_its_test() -> Iterator[None]:
    """A test that fails half-way must not leave a gateway process tree running."""
    yield
    from tests.harness.gateway import kill_leftovers

    kill_leftovers()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real PostgreSQL (scripts/pg_local.py: wal_level=logical, free port on 127.0.0.1) for
    the whole session. Tests that stop or crash a server start their own LocalPostgres."""
    from tests.harness.postgres import pg_local

    server = pg_local.LocalPostgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture()
def pg_database(postgres) -> Iterator[str]:
    """A fresh database on the session server, so slots and publications never collide; it is
    dropped afterwards with its inactive replication slots."""
    import uuid

    name = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    yield name
    postgres.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
        " WHERE database = %s AND NOT active", (name,)
    )
    postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
