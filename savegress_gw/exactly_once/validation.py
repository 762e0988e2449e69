"""Which profiles can be exactly-once: every combination that could lose, duplicate or reorder
events behind the transaction's back is refused, each with the reason."""

from __future__ import annotations

from typing import Any

from savegress_gw.plugins import Registry

_DROPPING = ("drop_oldest", "drop_newest")


def exactly_once_problems(profile: Any, registry: Registry) -> list[str]:
    """Problems of ``profile`` when ``exactly_once.enabled``; none when it is off."""
    settings = profile.exactly_once
    if not settings.enabled:
        return []
    problems = []

    def refuse(path: str, why: str) -> None:
        problems.append(f"{path}: {why} (exactly_once.enabled is true)")

    if not settings.idempotent_producer:
        refuse("exactly_once.idempotent_producer", "false is impossible: Kafka transactions need an idempotent producer")
    sink = profile.selected("sink")
    if sink != "kafka":
        refuse("output.type", f"{sink!r} cannot take part in a Kafka transaction; exactly-once needs output.type: kafka")
    else:
        acks = profile.output.acks
        if acks not in (None, "all"):
            refuse("output.acks", f"{acks!r}: transactions write with acks=all")
    if "ack_mode" in profile.replication.model_fields_set and profile.replication.ack_mode != "all":
        refuse("replication.ack_mode", f"{profile.replication.ack_mode!r}: transactions write with acks=all")
    source = profile.selected("source")
    source_cls = registry.get("source", source) if source else None
    if source_cls is not None and not (source_cls.resumable and
                                       (source_cls.replays_in_order or source_cls.sequence_lanes)):
        refuse("source.type", f"{source!r} cannot replay the same events in the same order from a position, "
                              "which exactly-once needs to recognise what Kafka already has; use a source that "
                              "can (generator, file, postgres, kafka)")
    strategy = profile.selected("backpressure")
    if strategy in _DROPPING:
        refuse("backpressure.strategy", f"{strategy!r} drops events")
    if strategy == "buffer" or profile.buffer.policy == "buffer":
        refuse("backpressure.strategy" if strategy == "buffer" else "buffer.overflow.policy",
               "spilling to disk is not supported: a restart re-reads from the source's committed position "
               "instead; use backpressure.strategy: pause")
    if profile.buffer.policy in _DROPPING:
        refuse("buffer.overflow.policy", f"{profile.buffer.policy!r} drops events")
    if (strategy == "weighted_fair" or profile.parallel.priority.enabled) and source_cls is not None \
            and source_cls.sequence_lanes:
        # A single-stream source numbers each priority class as a lane of its own; a source that
        # numbers its own lanes (a Kafka partition's offsets) can have one lane's events in several
        # classes, which a worker would then see out of lane order.
        refuse("backpressure.strategy" if strategy == "weighted_fair" else "parallel.priority.enabled",
               f"priorities reorder events between read batches, and source {source!r} numbers its events on "
               "lanes of its own (e.g. Kafka partitions) that priority classes would split; a worker's "
               "checkpoint needs each lane's events in order. Use a single-stream source (generator, file, "
               "postgres) or turn priorities off")
    queue = profile.selected("dlq")
    queue_cls = registry.get("dlq", queue) if queue else None
    if queue_cls is not None and not callable(getattr(queue_cls, "record_headers", None)):
        refuse("dlq.type", f"{queue!r}: a parked event is written in its batch's Kafka transaction, so the "
                           "dead-letter queue must be a topic on the output's cluster: use dlq.type: kafka (or "
                           "dlq.enabled: false: events Kafka can never take are then dropped, counted and logged "
                           "by id)")
    return problems
