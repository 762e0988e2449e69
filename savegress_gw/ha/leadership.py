"""When this node runs the pipeline: the supervisor asks :meth:`Leadership.tick` on every round.

``tick(running)`` returns :data:`START` when this node just became the confirmed leader (it has
committed an entry of its own term and written the cluster's checkpoint into its checkpoint file),
:data:`STOP` when a running leader lost leadership or could not commit within ``election_timeout``
(a lease entry every quarter of it, and every new version of the checkpoint file), and None
otherwise. :attr:`Leadership.confirmed_until` is how long the latest commit proves that no other
node leads; the supervisor hands it to the workers, which deliver nothing past it.
:meth:`flush` replicates the checkpoint once more before a leader exits.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

from savegress_gw.ha.raft import RaftNode

Action = Literal["start", "stop"]
START: Action = "start"
STOP: Action = "stop"

_CHECKPOINT, _LEASE, _PROFILE = "checkpoint", "lease", "profile"


class Leadership:
    """This node's side of the cluster (see the module docstring)."""

    def __init__(self, node: RaftNode, checkpoint_path: Path, profile_hash: str, election_timeout: float,
                 log: Any) -> None:
        self.node, self.path, self.profile_hash, self.log = node, checkpoint_path, profile_hash, log
        self.timeout = election_timeout
        self._lease_due = 0.0
        self._replicated: tuple[int, int] | None = None
        """(mtime_ns, size) of the checkpoint file last replicated."""
        self._seen_leader: str | None = ""
        self.replications = 0
        """Checkpoint versions this node committed through the cluster while leading."""
        self.replicated_at: float | None = None
        """Wall-clock time of the last of them (None before the first)."""
        self.confirmed_until = 0.0
        """``time.monotonic()`` before which no other node can lead: the start of this node's
        latest commit plus ``election_timeout`` (followers wait at least that long without
        hearing from a leader before they elect another)."""

    def tick(self, running: bool) -> Action | None:
        if not running:
            return START if self._take_over() else None
        if not self.node.leading:
            self.log.warning("this node is no longer the cluster leader: stopping the pipeline",
                             leader=self.node.leader)
            return STOP
        now = time.monotonic()
        if not self.flush() or (now >= self._lease_due and not self._commit_lease(now)):
            self.log.error("the cluster did not confirm this leader within ha.cluster.election_timeout: "
                           "stopping the pipeline", timeout_s=self.timeout)
            return STOP
        return None

    def flush(self) -> bool:
        """Replicate the checkpoint file if it changed since it was last replicated; False if not committed."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return True
        version = (stat.st_mtime_ns, stat.st_size)
        if version == self._replicated:
            return True
        if not self._commit(_CHECKPOINT, self.path.read_text()):
            return False
        self._replicated = version
        self.replications += 1
        self.replicated_at = time.time()
        return True

    def _take_over(self) -> bool:
        """Become the confirmed leader if Raft elected this node: commit, then restore the checkpoint."""
        if not self.node.leading:
            if self.node.leader != self._seen_leader:
                self._seen_leader = self.node.leader
                self.log.info("standing by", node=self.node.name, leader=self._seen_leader or "(electing)")
            return False
        if not self._commit_lease(time.monotonic()):
            return False
        previous = self.node.get(_PROFILE)  # read after a commit of this term: every earlier entry is applied
        if not self._commit(_PROFILE, self.profile_hash):
            return False
        if previous not in (None, self.profile_hash):
            self.log.warning("the previous leader ran another profile (profile hashes differ): every node should "
                             "run the same one", previous=previous, this=self.profile_hash)
        replicated = self.node.get(_CHECKPOINT)
        if replicated is not None:
            self._write_checkpoint(replicated)
        self.log.info("this node leads the cluster: starting the pipeline", node=self.node.name,
                      checkpoint="replicated" if replicated is not None else
                      ("local file" if self.path.exists() else "none"))
        self._seen_leader = ""
        return True

    def _commit_lease(self, now: float) -> bool:
        committed = self._commit(_LEASE, {"node": self.node.name, "at": time.time()})
        if committed:
            self._lease_due = now + self.timeout / 4
        return committed

    def _commit(self, key: str, value: Any) -> bool:
        """Commit ``key = value`` through the cluster; a commit extends :attr:`confirmed_until`
        to its start plus ``election_timeout``."""
        started = time.monotonic()
        if not self.node.put(key, value, self.timeout):
            return False
        self.confirmed_until = started + self.timeout
        return True

    def _write_checkpoint(self, text: str) -> None:
        """The cluster's checkpoint as this node's checkpoint file (atomically), before the pipeline starts."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".ha.tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path)
        stat = self.path.stat()
        self._replicated = (stat.st_mtime_ns, stat.st_size)
