"""The HA metrics of one node, for the status server's ``/metrics``.

``<ns>_ha_leader`` is 1 while this node's Raft state is leader; ``<ns>_ha_checkpoint_replications_total``
counts checkpoint versions this node committed through the cluster; and
``<ns>_ha_checkpoint_replicated_age_seconds`` is the time since the last of them (absent before the
first): how much a new leader would replay if this one died now.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from savegress_gw.ha.leadership import Leadership


class LeadershipCollector(Collector):
    """Reads :class:`Leadership`'s counters at scrape time (the supervisor thread is their only writer)."""

    def __init__(self, leadership: Leadership, namespace: str, labels: dict[str, str]) -> None:
        self.leadership = leadership
        self.namespace = namespace
        self.names, self.values = list(labels), list(labels.values())

    def collect(self) -> Iterator[Any]:
        lead = self.leadership
        leader = GaugeMetricFamily(f"{self.namespace}_ha_leader", "1 while this node leads the HA cluster.",
                                   labels=self.names)
        leader.add_metric(self.values, 1.0 if lead.node.leading else 0.0)
        yield leader
        replications = CounterMetricFamily(f"{self.namespace}_ha_checkpoint_replications",
                                           "Checkpoint versions this node committed through the cluster.",
                                           labels=self.names)
        replications.add_metric(self.values, lead.replications)
        yield replications
        age = GaugeMetricFamily(f"{self.namespace}_ha_checkpoint_replicated_age_seconds",
                                "Seconds since this node last committed a checkpoint through the cluster.",
                                labels=self.names)
        if lead.replicated_at is not None:
            age.add_metric(self.values, max(0.0, time.time() - lead.replicated_at))
        yield age
