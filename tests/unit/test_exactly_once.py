"""Exactly-once without a broker: which profiles are refused and why, frames, checkpoints, resume points."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from savegress_gw_plugins.backpressure import buffer, drop_newest, pause, weighted_fair
from savegress_gw_plugins.dlq import file as file_dlq
from savegress_gw_plugins.dlq import kafka as kafka_dlq
from savegress_gw_plugins.sinks import file as file_sink
from savegress_gw_plugins.sinks import kafka as kafka_sink
from savegress_gw_plugins.sources import generator, http, postgres
from savegress_gw.components import Batch
from savegress_gw.errors import ProfileError
from savegress_gw.exactly_once.checkpoints import CheckpointTopicError, WorkerCheckpoint, _end_offsets, \
    checkpoint_topic, resume_point
from savegress_gw.exactly_once.frames import Marker, decode_sequenced, encode_sequenced
from savegress_gw.testing import validated

MODULES = (generator, http, kafka_sink, file_sink, pause, drop_newest, buffer, weighted_fair, file_dlq, kafka_dlq)


def profile(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "source": {"type": "generator"},
        "output": {"type": "kafka", "brokers": ["127.0.0.1:9092"], "topic": "t"},
        "exactly_once": {"enabled": True},
    }
    data.update(sections)
    return data


def refusals(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ProfileError) as info:
        validated(data, *MODULES, postgres)
    return info.value.problems


def test_a_kafka_output_with_a_resumable_source_is_accepted() -> None:
    settings = validated(profile(replication={"ack_mode": "all", "min_isr": 2}), *MODULES).exactly_once
    assert settings.enabled and settings.transaction_timeout == 60.0


@pytest.mark.parametrize(("sections", "path", "why"), [
    ({"output": {"type": "file", "path": "x.jsonl"}}, "output.type", "cannot take part in a Kafka transaction"),
    ({"source": {"type": "http"}}, "source.type", "cannot replay the same events in the same order"),
    ({"backpressure": {"strategy": "drop_newest"}}, "backpressure.strategy", "drops events"),
    ({"buffer": {"overflow_policy": "drop_oldest"}}, "buffer.overflow.policy", "drops events"),
    ({"backpressure": {"strategy": "buffer"}}, "backpressure.strategy", "spilling to disk is not supported"),
    ({"replication": {"ack_mode": "leader"}}, "replication.ack_mode", "acks=all"),
    ({"exactly_once": {"enabled": True, "idempotent_producer": False}}, "exactly_once.idempotent_producer",
     "need an idempotent producer"),
])
def test_combinations_that_cannot_be_exactly_once_are_refused_with_the_reason(sections: dict[str, Any], path: str,
                                                                               why: str) -> None:
    found = refusals(profile(**sections))
    assert any(p.startswith(f"{path}: ") and why in p and "exactly_once.enabled is true" in p for p in found), found


def test_a_kafka_dead_letter_topic_on_the_output_cluster_is_accepted() -> None:
    dlq = validated(profile(dlq={"enabled": True, "type": "kafka", "preserve_order": True}), *MODULES).dlq
    assert dlq.enabled and dlq.preserve_order


def test_a_dead_letter_queue_outside_the_transaction_is_refused() -> None:
    (problem,) = refusals(profile(dlq={"enabled": True, "type": "file"}))
    assert problem.startswith("dlq.type: 'file': a parked event is written in its batch's Kafka transaction")
    (problem,) = refusals(profile(dlq={"enabled": True, "type": "kafka", "brokers": ["other:9092"]}))
    assert problem.startswith("dlq.brokers: with exactly_once.enabled the dead-letter topic must be on the "
                              "output's cluster")


def test_a_postgres_snapshot_is_refused_under_exactly_once_but_streaming_is_accepted() -> None:
    source = {"type": "postgres", "host": "db", "database": "app", "user": "cdc"}
    (problem,) = refusals(profile(source=source))
    assert problem.startswith("not implemented yet: snapshot.enabled with exactly_once.enabled")
    assert validated(profile(source=source, snapshot={"enabled": False}), *MODULES, postgres).exactly_once.enabled


def test_switched_off_it_refuses_nothing() -> None:
    data = profile(exactly_once={"enabled": False}, source={"type": "http"},
                   backpressure={"strategy": "drop_newest"})
    assert not validated(data, *MODULES).exactly_once.enabled


def test_sequenced_frames_round_trip_with_and_without_a_marker() -> None:
    batch = Batch([b'{"a":1}', b'{"a":2}'], ["t:1", "t:2"], ["e1", "e2"], ["INSERT"] * 2, ["public"] * 2,
                  ["t"] * 2, [1, 2], [10, 20])
    frame = decode_sequenced(encode_sequenced(batch, [7, 9], None, Marker({"": 12}, {"lsn": "0/1", "sequence": 3})))
    assert frame.batch.to_columns() == batch.to_columns()
    assert frame.ordinals == [7, 9] and [frame.lane(0), frame.lane(1)] == ["", ""]
    assert frame.marker == Marker({"": 12}, {"lsn": "0/1", "sequence": 3})
    lanes = decode_sequenced(encode_sequenced(batch, [5, 3], ["t:0", "t:1"], None))
    assert [lanes.lane(0), lanes.lane(1)] == ["t:0", "t:1"] and lanes.marker is None


def test_checkpoint_records_round_trip_and_the_topic_name_is_legal() -> None:
    checkpoint = WorkerCheckpoint(1, 2, 8, "generator", ordinals={"": 500}, ends={"": 480}, position=480)
    assert WorkerCheckpoint.decode(checkpoint.encode()) == checkpoint
    assert checkpoint_topic("my gw/1") == "savegress.checkpoints.my_gw_1"
    with pytest.raises(ValueError, match="version"):
        WorkerCheckpoint.decode(b'{"v": 99}')


def single(worker: int, ordinal: int, end: int, workers: int = 2) -> WorkerCheckpoint:
    return WorkerCheckpoint(worker, workers, 8, "generator", {"": ordinal}, {"": end}, end)


def test_a_single_stream_source_resumes_from_the_lowest_marker_of_all_workers() -> None:
    checkpoints = {0: single(0, 900, 900), 1: single(1, 700, 650)}
    assert resume_point(checkpoints, 2, 8, "generator", per_lane=False) == (650, 650)


def test_a_source_with_lanes_resumes_each_lane_from_its_lowest_end() -> None:
    checkpoints = {0: WorkerCheckpoint(0, 2, 8, "kafka", {}, {"t:0": 10, "t:1": 40}, None),
                   1: WorkerCheckpoint(1, 2, 8, "kafka", {}, {"t:0": 25, "t:1": 30, "t:2": 5}, None)}
    assert resume_point(checkpoints, 2, 8, "kafka", per_lane=True) == ({"t:0": 10, "t:1": 30}, 0)


def test_a_worker_without_a_checkpoint_means_the_source_starts_over() -> None:
    assert resume_point({0: single(0, 900, 900)}, 2, 8, "generator", per_lane=False) == (None, 0)
    assert resume_point({}, 2, 8, "generator", per_lane=True) == (None, 0)


def test_checkpoints_of_another_layout_are_refused() -> None:
    with pytest.raises(CheckpointTopicError, match="gateway.workers=4"):
        resume_point({0: single(0, 900, 900, workers=4)}, 2, 8, "generator", per_lane=False)


class _NewTopic:
    """A consumer's view of a checkpoint topic another worker just created: its partition has no
    leader for the first ``settling`` watermark requests (the race a CI run hit), or fails with
    ``error`` every time."""

    def __init__(self, settling: int = 0, error: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.settling, self.error = settling, error

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def get_watermark_offsets(self, partition: Any, timeout: float, cached: bool) -> tuple[int, int]:
        if self.settling:
            self.settling -= 1
            raise KafkaException(KafkaError(self.error))
        return 0, 7


def test_checkpoint_end_offsets_wait_for_a_new_topic_to_get_its_partition_leaders() -> None:
    assert _end_offsets(_NewTopic(settling=2), "ck", 5.0) == {0: 7}  # type: ignore[arg-type]
    with pytest.raises(CheckpointTopicError, match="NOT_LEADER_FOR_PARTITION"):
        _end_offsets(_NewTopic(settling=10_000), "ck", 0.3)  # type: ignore[arg-type]
    with pytest.raises(CheckpointTopicError, match="TOPIC_AUTHORIZATION_FAILED"):  # not retried
        _end_offsets(_NewTopic(settling=1, error=KafkaError.TOPIC_AUTHORIZATION_FAILED), "ck", 5.0)  # type: ignore[arg-type]
