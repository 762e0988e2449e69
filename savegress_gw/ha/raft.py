"""One node of the cluster: pysyncobj's Raft with one replicated dictionary.

:class:`RaftNode` starts pysyncobj's node on its own thread. It answers whether this node leads,
and commits values through the cluster: :meth:`RaftNode.put` returns only once a majority has the
write (True), or False when it could not within the timeout (no leader, no majority, not leading).
A committed write of this node's term also proves that every entry committed before it is applied
here, so :meth:`RaftNode.get` then sees the cluster's latest value.

The Raft log, the current term and the vote live in ``state_dir`` (pysyncobj's file journal,
written through a memory map: it survives a killed process, a machine crash may lose the last
writes), compacted into a snapshot of the replicated values every ``snapshot_interval`` or 5,000
entries. So a restarted node, or a whole cluster restarted at once, still has the replicated
checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, SyncObjException
from pysyncobj.batteries import ReplDict
from pysyncobj.syncobj import _RAFT_STATE

from savegress_gw.ha.validation import other_nodes, own_address


class RaftNode:
    """This gateway's node of the cluster described by ``cluster`` (``ha.cluster`` settings)."""

    def __init__(self, cluster: Any, state_dir: Path) -> None:
        self.address = own_address(cluster)
        self.name = cluster.node_id or self.address
        self._values = ReplDict()
        election = cluster.election_timeout
        state_dir.mkdir(parents=True, exist_ok=True)
        conf = SyncObjConf(
            journalFile=str(state_dir / "journal"),
            fullDumpFile=str(state_dir / "snapshot"),
            logCompactionMinTime=cluster.snapshot_interval,
            useFork=False,  # never fork the supervisor (its threads, its children) to write a snapshot
            bindAddress=cluster.bind_address,
            raftMinTimeout=election,
            raftMaxTimeout=election * 2,
            connectionTimeout=election * 2,
            appendEntriesPeriod=cluster.heartbeat_interval,
            leaderFallbackTimeout=election,
            commandsWaitLeader=False,
            dynamicMembershipChange=False,
        )
        self._node = SyncObj(self.address, other_nodes(cluster), conf=conf, consumers=[self._values])

    @property
    def leading(self) -> bool:
        """Raft says this node is the leader (it may not know yet that a majority elected another)."""
        return self._node.getStatus()["state"] == _RAFT_STATE.LEADER

    @property
    def leader(self) -> str | None:
        """The address of the node this node believes leads, or None during an election."""
        leader = self._node.getStatus()["leader"]
        return None if leader is None else str(leader)

    def put(self, key: str, value: Any, timeout: float) -> bool:
        """Commit ``key = value`` through the cluster; False when not committed within ``timeout``."""
        if not self.leading:
            return False
        try:
            self._values.set(key, value, sync=True, timeout=timeout)
        except SyncObjException:
            return False
        return True

    def get(self, key: str) -> Any:
        """The value of ``key`` as applied on this node (None when unset)."""
        return self._values.get(key)

    def close(self) -> None:
        self._node.destroy()
