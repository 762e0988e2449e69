"""Profile section ``ha``: several gateway nodes, one Raft leader running the pipeline.

``ha: {enabled: true, mode: active-passive, cluster: {consensus: raft, nodes: 3, node_id: node-1,
bind_address: 10.0.0.1:7000, peers: [10.0.0.2:7000, 10.0.0.3:7000], election_timeout: 1s,
heartbeat_interval: 100ms}}`` (``spec/reference.md``: ``ha.*`` and ``cluster.*``). How it works:
:mod:`savegress_gw.ha`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from savegress_gw.profile.settings import Section
from savegress_gw.units import Duration


class ClusterSettings(Section):
    consensus: Literal["raft"] = "raft"
    """The only consensus protocol."""
    engine: Literal["pysyncobj", "raftos"] = "pysyncobj"
    """The Raft implementation (docs/decisions/0001-ha-consensus-engine.md says why pysyncobj)."""
    nodes: int | None = Field(None, ge=1)
    """How many nodes the cluster has; when set it must match ``bind_address`` plus ``peers``."""
    node_id: str | None = None
    """This node's name in logs (default: its address)."""
    bind_address: str | None = Field(None, pattern=r"^[^:\s]*:\d{1,5}$")
    """``host:port`` this node listens on for the cluster (required with ``ha.enabled``)."""
    advertise_address: str | None = Field(None, pattern=r"^[^:\s]+:\d{1,5}$")
    """``host:port`` the other nodes reach this node at, as listed in their ``peers`` (default:
    ``bind_address``)."""
    peers: list[str] = []
    """The other nodes' addresses, ``host:port`` each (this node's own address may be listed too)."""
    election_timeout: Duration = Field(1.0, gt=0)
    """How long followers wait for the leader before electing another; also how long a leader that
    cannot reach a majority keeps running the pipeline."""
    heartbeat_interval: Duration = Field(0.1, gt=0)
    """How often the leader sends Raft heartbeats."""
    snapshot_interval: Duration = Field(300.0, gt=0)
    """How often this node compacts its Raft journal into a snapshot of the replicated state (also
    after 5,000 entries, whichever comes first)."""
    data_dir: str | None = None
    """Where this node keeps its Raft journal and snapshot, so a restarted node (or a whole cluster
    restarted at once) still has the replicated checkpoint (default: ``<checkpoint.dir>/<gateway.id>.raft``)."""


class HaSettings(Section):
    """High availability: one node of the cluster runs the pipeline, the others stand by."""

    enabled: bool = False
    """Join the cluster given in ``cluster`` and run the pipeline only while this node leads it."""
    mode: Literal["active-passive", "active-active"] = "active-passive"
    """``active-passive``: the leader runs the pipeline (``active-active`` is not implemented)."""
    cluster: ClusterSettings = ClusterSettings()
