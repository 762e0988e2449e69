"""HA: three gateway nodes in a Raft cluster on 127.0.0.1, the leader runs the pipeline.

The leader's whole process tree is SIGKILLed mid-stream (a machine failure): another node takes
over, resumes from the checkpoint the cluster replicated and finishes the stream. Every event is
then in some node's output (at least once), and the new leader did not start over.

Or the leader's process tree is frozen (SIGSTOP: a hung machine, a long GC or VM pause, a
partition that heals): another node takes over; when the old leader thaws it must notice it lost
the cluster and stop its pipeline instead of streaming beside the new leader.

Or only the leader's Raft links are cut (:class:`~tests.harness.raft_links.RaftLinks`) while its
pipeline still reaches the sink: it must stop by itself, and the majority goes on.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness.gateway import Gateway, free_port, wait_for
from tests.harness.raft_links import RaftLinks
from tests.harness.verify import Verdict, file_sink_events, verify_sequences

pytestmark = pytest.mark.slow


def node_profile(workdir: Path, index: int, ports: list[int], count: int, rate: int,
                 advertised: list[str] | None = None) -> dict[str, Any]:
    """Node ``index`` of a cluster on ``ports``; with ``advertised`` (relays in front of those
    ports, :class:`RaftLinks`) the nodes know each other by the relays' addresses."""
    (workdir / "out").mkdir(parents=True, exist_ok=True)
    cluster = {"node_id": f"node-{index}", "bind_address": f"127.0.0.1:{ports[index]}", "nodes": len(ports),
               "peers": [f"127.0.0.1:{port}" for port in ports], "election_timeout": "1s"}
    if advertised is not None:
        cluster.update(advertise_address=advertised[index], peers=advertised)
    return {
        "gateway": {"id": "ha-gw", "workers": 1, "graceful_timeout": "20s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 200},
        "output": {"type": "file", "path": str(workdir / "out" / "events.jsonl")},
        "batching": {"max_size": 500, "max_wait": "20ms"},
        "checkpoint": {"interval": "200ms"},
        "ha": {"enabled": True, "cluster": cluster},
    }


def written(node: Gateway) -> list[int]:
    return [event["after"]["seq"] for event in file_sink_events(node.workdir / "out" / "events.jsonl")]


def leading(nodes: list[Gateway], delivered: dict[Gateway, int]) -> Gateway | None:
    """The running node whose output grew by more than 2,000 events since ``delivered``."""
    for node in nodes:
        if node.process.poll() is None and len(written(node)) > delivered.get(node, 0) + 2_000:
            return node
    return None


def ready(node: Gateway) -> int:
    return requests.get(node.url("/health/ready"), timeout=5).status_code


def start_cluster(tmp_path: Path, ports: list[int], count: int, rate: int,
                  advertised: list[str] | None = None) -> list[Gateway]:
    """One gateway per port, each in ``tmp_path/node-<i>``, all streaming the same generator."""
    return [Gateway(tmp_path / f"node-{i}", node_profile(tmp_path / f"node-{i}", i, ports, count, rate,
                                                         advertised)).start() for i in range(len(ports))]


def only_the_new_leader_delivers(old: Gateway, new: Gateway) -> None:
    """While ``new`` delivers 2,000 more events, ``old``'s output must not grow."""
    old_before, new_before = len(written(old)), len(written(new))
    wait_for(lambda: len(written(new)) > new_before + 2_000, 30, "the new leader to go on")
    assert len(written(old)) == old_before, "the old leader still delivers beside the new one"


def nothing_missing(nodes: list[Gateway], count: int) -> Verdict:
    """Assert that each of the ``count`` events is in some node's output; the verdict counts duplicates."""
    verdict = verify_sequences([seq for node in nodes for seq in written(node)], count)
    assert verdict.missing == [], str(verdict)
    return verdict


def wait_for_a_replicated_checkpoint(leader: Gateway) -> None:
    """Until the leader has committed a checkpoint of its own through the cluster: a leader killed
    before that leaves its successor only what the leader before it replicated (nothing, at first)."""
    wait_for(lambda: leader.metric("savegress_ha_checkpoint_replications_total") >= 1, 30,
             "the leader to replicate a checkpoint")
    assert leader.metric("savegress_ha_leader") == 1


def finish(nodes: list[Gateway], timeout: float) -> Gateway:
    """Wait for the node that finishes the stream (exits 0), stop the others; return it."""
    finished = wait_for(lambda: next((n for n in nodes if n.process.poll() == 0), None), timeout,
                        "the leader to finish the stream")
    for node in nodes:
        if node is not finished and node.process.poll() is None:
            assert node.stop() == 0, node.stderr()
    return finished


def kill_all(nodes: list[Gateway]) -> None:
    """SIGKILL the nodes still running (thawing frozen ones first)."""
    for node in nodes:
        if node.process.poll() is None:
            os.killpg(node.pid, signal.SIGCONT)
            node.process.kill()


@pytest.mark.timeout(240)
def test_sigkill_of_the_leader_moves_the_pipeline_to_another_node_which_resumes(tmp_path: Path) -> None:
    run_cluster(tmp_path, count=40_000, rate=4_000, leader_kills=1)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_ten_leader_kills_with_the_killed_nodes_restarted(tmp_path: Path) -> None:
    run_cluster(tmp_path, count=300_000, rate=4_000, leader_kills=10)


@pytest.mark.timeout(240)
def test_a_frozen_leader_is_replaced_and_stops_its_pipeline_when_it_thaws(tmp_path: Path) -> None:
    count = 40_000
    nodes = start_cluster(tmp_path, [free_port() for _ in range(3)], count, 4_000)
    try:
        leader = wait_for(lambda: leading(nodes, {}), 60, "one node to lead and deliver")
        wait_for(lambda: ready(leader) == 200, 15, "the leader to report ready")
        delivered = {n: len(written(n)) for n in nodes}
        os.killpg(leader.pid, signal.SIGSTOP)
        try:
            successor = wait_for(lambda: leading([n for n in nodes if n is not leader], delivered), 60,
                                 "another node to lead while the old leader is frozen")
        finally:
            os.killpg(leader.pid, signal.SIGCONT)
        # Thawed, the old leader learns the newer term at once (or fails to renew its lease within
        # election_timeout) and stops its pipeline: its output must stop growing and it must stop
        # reporting ready, while the new leader goes on.
        wait_for(lambda: ready(leader) == 503, 15, "the thawed old leader to stop reporting ready")
        only_the_new_leader_delivers(leader, successor)
        assert leader.process.poll() is None, "the thawed old leader exited instead of standing by"
        assert finish(nodes, 120) is successor
    finally:
        kill_all(nodes)
    verdict = nothing_missing(nodes, count)
    print(f"frozen leader replaced: {verdict}")
    assert verdict.duplicates < count // 4, str(verdict)
    log = leader.stderr()
    assert "no longer the cluster leader" in log or "did not confirm this leader" in log, log[-3000:]


@pytest.mark.timeout(240)
def test_workers_of_a_frozen_supervisor_stop_delivering_when_its_lease_runs_out(tmp_path: Path) -> None:
    """Only the leader's supervisor is frozen (SIGSTOP; its source process and workers run on):
    it can renew nothing, so its workers must stop delivering within election_timeout, before
    another node can lead; thawed, it learns it lost the lead and stops its pipeline."""
    count, rate = 40_000, 4_000
    nodes = start_cluster(tmp_path, [free_port() for _ in range(3)], count, rate)
    try:
        leader = wait_for(lambda: leading(nodes, {}), 60, "one node to lead and deliver")
        wait_for_a_replicated_checkpoint(leader)
        os.kill(leader.pid, signal.SIGSTOP)
        frozen_at = len(written(leader))
        try:
            successor = wait_for(lambda: leading([n for n in nodes if n is not leader], {}), 60,
                                 "another node to lead while the old leader's supervisor is frozen")
            held = len(written(leader))
            only_the_new_leader_delivers(leader, successor)
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        wait_for(lambda: ready(leader) == 503, 15, "the thawed old leader to stop its pipeline")
        assert leader.metric("savegress_ha_delivery_holds_total") >= 1
        finish(nodes, 120)
    finally:
        kill_all(nodes)
    verdict = nothing_missing(nodes, count)
    print(f"supervisor frozen: its workers delivered {held - frozen_at} more before holding: {verdict}")
    assert held - frozen_at < 2 * rate, "the workers held only after more than 2 s"
    assert "holding deliveries" in leader.stderr()


@pytest.mark.timeout(240)
def test_a_leader_cut_off_from_the_cluster_stops_its_pipeline_and_a_majority_goes_on(tmp_path: Path) -> None:
    """A partition of the leader's Raft port only: its pipeline still reaches the sink, so it
    must stop by itself (it cannot commit its lease) while the majority elects another leader,
    which resumes from the replicated checkpoint. Healed, the cut-off node rejoins; its higher term
    may unseat the new leader once more (pysyncobj has no pre-vote), which replays again."""
    count, rate = 40_000, 4_000
    ports = [free_port() for _ in range(3)]
    links = RaftLinks(ports)
    nodes = start_cluster(tmp_path, ports, count, rate, links.advertised)
    try:
        leader = wait_for(lambda: leading(nodes, {}), 60, "one node to lead and deliver")
        wait_for_a_replicated_checkpoint(leader)
        delivered = {n: len(written(n)) for n in nodes}
        links.isolate(links.advertised[nodes.index(leader)])
        successor = wait_for(lambda: leading([n for n in nodes if n is not leader], delivered), 60,
                             "another node to lead while the old leader is cut off")
        wait_for(lambda: ready(leader) == 503, 15, "the cut-off leader to stop reporting ready")
        settled = len(written(leader))
        only_the_new_leader_delivers(leader, successor)
        links.heal()
        finish(nodes, 120)
    finally:
        kill_all(nodes)
        links.close()
    verdict = nothing_missing(nodes, count)
    after_the_cut = settled - delivered[leader]
    resumed_at = written(successor)[delivered[successor]]
    print(f"cut-off leader delivered {after_the_cut} more, successor resumed at {resumed_at}: {verdict}")
    assert after_the_cut < 4 * rate, "the cut-off leader took more than 4 s to stop its pipeline"
    assert resumed_at > 1, "the new leader started over instead of resuming"
    assert verdict.duplicates < count // 2, str(verdict)
    log = leader.stderr()
    assert "no longer the cluster leader" in log or "did not confirm this leader" in log, log[-3000:]


@pytest.mark.timeout(240)
def test_a_whole_cluster_killed_at_once_resumes_from_the_journaled_checkpoint(tmp_path: Path) -> None:
    """Every node SIGKILLed at once; the two that never led come back first and one of them leads
    with no checkpoint file of its own: it must resume from the replicated checkpoint its Raft
    journal kept, not start over."""
    count, rate = 40_000, 4_000
    nodes = start_cluster(tmp_path, [free_port() for _ in range(3)], count, rate)
    try:
        leader = wait_for(lambda: leading(nodes, {}), 60, "one node to lead and deliver")
        wait_for_a_replicated_checkpoint(leader)
        for node in nodes:
            os.killpg(node.pid, signal.SIGKILL)
        for node in nodes:
            node.wait(10)
        delivered = {n: len(written(n)) for n in nodes}
        standbys = [n for n in nodes if n is not leader]
        assert not any((n.workdir / "checkpoints" / "ha-gw.json").exists() for n in standbys)
        for node in standbys:
            node.start()
        successor = wait_for(lambda: leading(standbys, delivered), 60, "a standby to lead after the restart")
        resumed_at = written(successor)[delivered[successor]]
        leader.start()
        finish(nodes, 120)
    finally:
        kill_all(nodes)
    verdict = nothing_missing(nodes, count)
    print(f"whole cluster killed; {successor.workdir.name} resumed at {resumed_at}: {verdict}")
    assert resumed_at > 1, "the new leader started over: the replicated checkpoint did not survive the restart"
    assert verdict.duplicates < count // 4, str(verdict)
    assert '"checkpoint": "replicated"' in successor.stderr()


def run_cluster(tmp_path: Path, count: int, rate: int, leader_kills: int) -> None:
    """Three nodes; SIGKILL the leader's process tree ``leader_kills`` times (restarting a killed
    node each time after the first, so a majority stays up); then every event must be in some node's
    output, and each new leader must have resumed instead of starting over."""
    nodes = start_cluster(tmp_path, [free_port() for _ in range(3)], count, rate)
    delivered: dict[Gateway, int] = {}
    replayed_from: list[int] = []
    try:
        leader = wait_for(lambda: leading(nodes, delivered), 60, "one node to lead and deliver")
        assert [written(n) for n in nodes if n is not leader] == [[], []], "a node that does not lead delivered"
        wait_for(lambda: ready(leader) == 200, 15, "the leader to report ready (its children's boot messages)")
        assert [ready(n) for n in nodes if n is not leader] == [503, 503], "a standby node reports ready"
        assert [n.metric("savegress_ha_leader") for n in nodes if n is not leader] == [0, 0]
        for kill in range(leader_kills):
            wait_for_a_replicated_checkpoint(leader)
            delivered = {n: len(written(n)) for n in nodes}
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait(10)
            if kill:  # bring the node killed before back, so two of three are up again
                down = next(n for n in nodes if n is not leader and n.process.poll() is not None)
                down.start()
            successor = wait_for(lambda: leading(nodes, delivered), 60, f"a new leader after kill {kill + 1}")
            replayed_from.append(min(written(successor)[delivered[successor]:]))
            leader = successor
        finished = finish(nodes, 600)
    finally:
        kill_all(nodes)

    verdict = nothing_missing(nodes, count)
    print(f"{leader_kills} leader SIGKILLs; new leaders resumed at {replayed_from}: {verdict}")
    assert all(first > 1 for first in replayed_from), "a new leader started over instead of resuming"
    assert verdict.duplicates < count // 4, "new leaders replayed far more than since the last checkpoint"
    log = finished.stderr()
    assert "this node leads the cluster: starting the pipeline" in log and '"checkpoint": "replicated"' in log, log
