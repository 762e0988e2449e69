"""Which ``ha`` settings can run: every problem names its key path."""

from __future__ import annotations

from typing import Any


def ha_problems(profile: Any) -> list[str]:
    """Problems of ``profile.ha`` when it is enabled; none when it is off."""
    ha = profile.ha
    if not ha.enabled:
        return []
    cluster, problems = ha.cluster, []
    if ha.mode != "active-passive":
        problems.append("not implemented yet: ha.mode: active-active (one leader runs the pipeline; "
                        "use active-passive)")
    if cluster.engine == "raftos":
        problems.append("not implemented yet: ha.cluster.engine: raftos (raftos 0.2.6 does not run on Python 3.11 "
                        "unpatched and stops committing after leader failovers; see "
                        "docs/decisions/0001-ha-consensus-engine.md); use pysyncobj")
    if cluster.bind_address is None:
        problems.append("ha.cluster.bind_address: required with ha.enabled (host:port this node listens on "
                        "for the cluster, e.g. 0.0.0.0:7000)")
        return problems
    others = other_nodes(cluster)
    if not others:
        problems.append("ha.cluster.peers: list the other nodes (host:port each) with ha.enabled")
    if cluster.nodes is not None and cluster.nodes != len(others) + 1:
        problems.append(f"ha.cluster.nodes: {cluster.nodes}, but bind_address and peers name {len(others) + 1} "
                        f"nodes")
    if profile.checkpoint.enabled and profile.checkpoint.type != "file":
        problems.append("checkpoint.type: a new leader resumes from the checkpoint the cluster replicated "
                        "(written to its checkpoint.dir first): use checkpoint.type: file with ha.enabled")
    return problems


def own_address(cluster: Any) -> str:
    """The address the other nodes know this node by."""
    return cluster.advertise_address or cluster.bind_address


def other_nodes(cluster: Any) -> list[str]:
    """``peers`` without this node's own address, in order, each once."""
    me = own_address(cluster)
    return list(dict.fromkeys(peer for peer in cluster.peers if peer != me))
