"""The Raft journal and its snapshots on disk: a one-node cluster (pysyncobj, for real) written,
compacted, closed and reopened from the same ``state_dir``."""

from __future__ import annotations

import time
from pathlib import Path

from savegress_gw.ha.raft import RaftNode
from savegress_gw.profile.ha import ClusterSettings
from tests.harness.gateway import free_port, wait_for


def single_node(state_dir: Path, snapshot_interval: float) -> RaftNode:
    cluster = ClusterSettings(bind_address=f"127.0.0.1:{free_port()}", snapshot_interval=snapshot_interval)
    node = RaftNode(cluster, state_dir)
    wait_for(lambda: node.leading, 15, "the single node to lead")
    return node


def test_values_survive_a_restart_from_the_journal_alone(tmp_path: Path) -> None:
    node = single_node(tmp_path, snapshot_interval=3600)
    for position in range(50):
        assert node.put("checkpoint", f'{{"position": {position}}}', 5)
    node.close()
    assert not (tmp_path / "snapshot").exists(), "nothing was compacted yet: the journal alone holds it"
    again = single_node(tmp_path, snapshot_interval=3600)
    try:
        assert again.put("lease", "x", 5), "a commit of the new term applies every earlier entry"
        assert again.get("checkpoint") == '{"position": 49}'
    finally:
        again.close()


def test_values_survive_a_restart_from_a_snapshot_and_the_journal_after_it(tmp_path: Path) -> None:
    node = single_node(tmp_path, snapshot_interval=0.5)
    try:
        assert node.put("checkpoint", '{"position": 1}', 5)
        time.sleep(1.0)
        assert node.put("checkpoint", '{"position": 2}', 5)  # the tick after the interval compacts
        wait_for(lambda: (tmp_path / "snapshot").exists(), 15, "the journal to be compacted into a snapshot")
        assert node.put("checkpoint", '{"position": 3}', 5)
    finally:
        node.close()
    again = single_node(tmp_path, snapshot_interval=3600)
    try:
        assert again.put("lease", "x", 5)
        assert again.get("checkpoint") == '{"position": 3}'
    finally:
        again.close()
