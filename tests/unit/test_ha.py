"""HA: which ``ha`` settings are refused, and when a node starts and stops its pipeline.

The Raft cluster itself runs for real in tests/system/test_ha_process.py; here ``Leadership`` is
driven by a scripted node to check each transition, including the ones a process test can hardly
provoke (a leader that can no longer commit).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from savegress_gw.errors import ProfileError
from savegress_gw.ha.leadership import START, STOP, Leadership
from savegress_gw.ha.metrics import LeadershipCollector
from savegress_gw.plugins import load_registry
from savegress_gw.profile import load_profile

REGISTRY = load_registry()


def ha_problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "ha.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        load_profile([path], REGISTRY, env={})
    return info.value.problems


def test_a_cluster_node_needs_its_address_and_its_peers(tmp_path: Path) -> None:
    assert ha_problems_of(tmp_path, "ha:\n  enabled: true\n") == [
        "ha.cluster.bind_address: required with ha.enabled (host:port this node listens on for the cluster, "
        "e.g. 0.0.0.0:7000)"]
    assert ha_problems_of(tmp_path, "ha:\n  enabled: true\n  cluster:\n    bind_address: a:7000\n"
                                    "    peers: [a:7000]\n") == [
        "ha.cluster.peers: list the other nodes (host:port each) with ha.enabled"]


def test_nodes_must_match_the_addresses_and_the_checkpoint_must_be_a_file(tmp_path: Path) -> None:
    found = ha_problems_of(tmp_path, "ha:\n  enabled: true\n  cluster:\n    nodes: 3\n    bind_address: a:7000\n"
                                     "    peers: [a:7000, b:7000]\ncheckpoint:\n  type: memory\n")
    assert found[0] == "ha.cluster.nodes: 3, but bind_address and peers name 2 nodes"
    assert found[1].startswith("checkpoint.type: a new leader resumes from the checkpoint the cluster replicated")


def test_raftos_is_refused_with_the_reason(tmp_path: Path) -> None:
    (problem,) = ha_problems_of(tmp_path, "ha:\n  enabled: true\n  cluster:\n    engine: raftos\n"
                                          "    bind_address: a:7000\n    peers: [b:7000]\n")
    assert problem.startswith("not implemented yet: ha.cluster.engine: raftos")
    assert "docs/decisions/0001-ha-consensus-engine.md" in problem


def test_a_three_node_cluster_validates(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("ha:\n  enabled: true\n  cluster:\n    consensus: raft\n    nodes: 3\n"
                    "    bind_address: 0.0.0.0:7000\n    advertise_address: a:7000\n"
                    "    peers: [a:7000, b:7000, c:7000]\n    snapshot_interval: 10m\n"
                    "    data_dir: /var/lib/savegress/raft\n")
    profile = load_profile([path], REGISTRY, env={}).profile
    assert profile.ha.enabled and profile.ha.cluster.peers == ["a:7000", "b:7000", "c:7000"]
    assert (profile.ha.cluster.snapshot_interval, profile.ha.cluster.data_dir) == (600.0, "/var/lib/savegress/raft")


class ScriptedNode:
    """A Raft node whose leadership and commits the test sets."""

    def __init__(self) -> None:
        self.name, self.leader = "node-1", None
        self.leading, self.commits = False, True
        self.values: dict[str, Any] = {}
        self.puts: list[str] = []

    def put(self, key: str, value: Any, timeout: float) -> bool:
        if not (self.leading and self.commits):
            return False
        self.puts.append(key)
        self.values[key] = value
        return True

    def get(self, key: str) -> Any:
        return self.values.get(key)


@pytest.fixture
def node() -> ScriptedNode:
    return ScriptedNode()


def leadership(node: ScriptedNode, tmp_path: Path) -> Leadership:
    return Leadership(node, tmp_path / "gw.json", "hash-1", 1.0, structlog.get_logger())  # type: ignore[arg-type]


def test_a_new_leader_writes_the_replicated_checkpoint_before_it_starts(node: ScriptedNode, tmp_path: Path) -> None:
    lead = leadership(node, tmp_path)
    (tmp_path / "gw.json").write_text('{"position": 5}')  # this node's own, older file
    assert lead.tick(running=False) is None, "a follower does not start"
    node.leading = True
    node.values["checkpoint"] = '{"position": 900}'
    assert lead.tick(running=False) == START
    assert json.loads((tmp_path / "gw.json").read_text()) == {"position": 900}
    assert node.puts[:2] == ["lease", "profile"], "it committed in its own term before reading"


def test_a_leader_replicates_each_new_checkpoint_once(node: ScriptedNode, tmp_path: Path) -> None:
    node.leading = True
    lead = leadership(node, tmp_path)
    assert lead.tick(running=False) == START
    (tmp_path / "gw.json").write_text('{"position": 7}')
    assert lead.tick(running=True) is None
    assert node.values["checkpoint"] == '{"position": 7}'
    checkpoints = node.puts.count("checkpoint")
    assert lead.tick(running=True) is None and node.puts.count("checkpoint") == checkpoints


def test_a_leader_stops_its_pipeline_when_it_loses_the_lead_or_cannot_commit(node: ScriptedNode,
                                                                              tmp_path: Path) -> None:
    node.leading = True
    lead = leadership(node, tmp_path)
    assert lead.tick(running=False) == START
    (tmp_path / "gw.json").write_text('{"position": 8}')
    node.commits = False  # no majority answers
    assert lead.tick(running=True) == STOP
    node.commits, node.leading = True, False
    assert lead.tick(running=True) == STOP


def test_the_metrics_show_the_leader_and_its_replicated_checkpoints(node: ScriptedNode, tmp_path: Path) -> None:
    lead = leadership(node, tmp_path)
    registry = CollectorRegistry()
    registry.register(LeadershipCollector(lead, "savegress", {"env": "test"}))

    def samples() -> dict[str, float]:
        return {sample.name: sample.value for family in registry.collect() for sample in family.samples}

    assert samples() == {"savegress_ha_leader": 0.0, "savegress_ha_checkpoint_replications_total": 0.0}
    node.leading = True
    assert lead.tick(running=False) == START
    (tmp_path / "gw.json").write_text('{"position": 7}')
    assert lead.tick(running=True) is None
    now = samples()
    assert now["savegress_ha_leader"] == 1.0 and now["savegress_ha_checkpoint_replications_total"] == 1.0
    assert 0.0 <= now["savegress_ha_checkpoint_replicated_age_seconds"] < 5.0
    assert 'savegress_ha_leader{env="test"} 1.0' in generate_latest(registry).decode()


def test_each_commit_extends_the_lease_the_workers_deliver_under(node: ScriptedNode, tmp_path: Path) -> None:
    lead = leadership(node, tmp_path)
    assert lead.confirmed_until == 0.0, "no lease before leading"
    node.leading = True
    before = time.monotonic()
    assert lead.tick(running=False) == START
    first = lead.confirmed_until
    assert before + 1.0 <= first <= time.monotonic() + 1.0, "a commit's start plus election_timeout"
    time.sleep(0.3)  # past the lease period (a quarter of election_timeout)
    assert lead.tick(running=True) is None
    assert lead.confirmed_until > first + 0.25, "the lease entry renewed it"
    renewed = lead.confirmed_until
    node.commits = False
    time.sleep(0.3)
    assert lead.tick(running=True) == STOP
    assert lead.confirmed_until == renewed, "a failed commit extends nothing"
