"""The ``kafka`` source's configuration, validated as a profile (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.kafka.consumer import consumer_settings, parse_position
from savegress_gw.testing import validated
from savegress_gw_plugins.sources import kafka as kafka_source


def source(**keys: Any) -> Any:
    return validated({"source": {"type": "kafka", "brokers": "k1:9092, k2:9093", **keys}}, kafka_source).source


def problems(**keys: Any) -> str:
    with pytest.raises(ProfileError) as caught:
        source(**keys)
    return "\n".join(caught.value.problems)


def test_defaults_and_broker_list() -> None:
    config = source(topics=["orders"])
    assert config.brokers == ["k1:9092", "k2:9093"]
    assert (config.group_id, config.start, config.format, config.connect_timeout) == (None, "earliest", "envelope", 30.0)
    assert source(topic_pattern=r"cdc\..*", connect_timeout="5s", start="latest").connect_timeout == 5.0


@pytest.mark.parametrize("keys, message", [
    ({}, "exactly one of topics"),
    ({"topics": ["a"], "topic_pattern": "a.*"}, "exactly one of topics"),
    ({"topics": []}, "source.topics"),
    ({"topics": ["bad topic"]}, "may hold only letters"),
    ({"topic_pattern": "cdc.(unclosed"}, "is not a regular expression"),
    ({"topics": ["a"], "start": "beginning"}, "source.start"),
    ({"topics": ["a"], "format": "avro"}, "source.format"),
    ({"topics": ["a"], "group_id": ""}, "source.group_id"),
    ({"topics": ["a"], "connect_timeout": "0s"}, "source.connect_timeout"),
    ({"topics": ["a"], "sasl": {"mechanism": "PLAIN"}}, "sasl needs username and password"),
    ({"topics": ["a"], "consumer": {"enable.auto.commit": True}}, "gateway commits offsets only after delivery"),
    ({"topics": ["a"], "consumer": {"group.id": "x"}}, "use source.group_id"),
    ({"topics": ["a"], "consumer": {"auto.offset.reset": "latest"}}, "use source.start"),
    ({"topics": ["a"], "consumer": {"error_cb": "x"}}, "callback the gateway sets itself"),
    ({"topics": ["a"], "topic": "a"}, "unknown key"),
])
def test_invalid_settings_are_refused_with_their_key_path(keys: dict[str, Any], message: str) -> None:
    assert message in problems(**keys)


def test_brokers_must_be_host_and_port() -> None:
    with pytest.raises(ProfileError, match="must be host:port"):
        validated({"source": {"type": "kafka", "brokers": ["kafka"], "topics": ["a"]}}, kafka_source)


def test_consumer_settings_commit_manually_and_read_committed_only() -> None:
    conf = consumer_settings({"bootstrap.servers": "k1:9092"}, "grp", "gw-source", "latest",
                             {"isolation.level": "read_uncommitted", "fetch.max.bytes": 1000})
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert (conf["group.id"], conf["group.instance.id"], conf["auto.offset.reset"]) == ("grp", "gw-source", "latest")
    assert conf["isolation.level"] == "read_uncommitted" and conf["fetch.max.bytes"] == 1000
    defaults = consumer_settings({}, "g", "gw-source", "earliest", {})
    assert defaults["isolation.level"] == "read_committed"
    assert defaults["topic.metadata.refresh.interval.ms"] == 10_000, "new and missing topics found within 10 s"


def test_positions_name_partitions_as_topic_colon_partition() -> None:
    assert parse_position({"cdc.orders:0": 5, "a-b:12": 0}) == {"cdc.orders:0": 5, "a-b:12": 0}
    for bad in ([1, 2], {"orders": 1}, {"orders:x": 1}, {"orders:0": -1}, {"orders:0": "5"}, {":0": 1},
                {"orders:0": True}):
        with pytest.raises(ValueError, match="position"):
            parse_position(bad)
