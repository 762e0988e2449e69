"""The local Apache Kafka launcher (scripts/kafka_local.py) for tests, and a check for leftovers."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    if "kafka_local" in sys.modules:
        return sys.modules["kafka_local"]
    spec = importlib.util.spec_from_file_location("kafka_local", REPO / "scripts" / "kafka_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafka_local"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


kafka_local = _load()


def broker_pids_under(directory: Path) -> list[int]:
    """Live Kafka JVMs whose command line mentions ``directory`` (none may survive a stop)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and b"kafka.Kafka" in cmdline and str(directory).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


@contextmanager
def running_cluster(directory: Path, nodes: int, **options: Any) -> Iterator[Any]:
    """A LocalKafkaCluster of ``nodes`` under ``directory``, started for the block; afterwards every
    node is stopped (nodes a test left down are fine) and no JVM of it may survive."""
    cluster = kafka_local.LocalKafkaCluster(directory, nodes, **options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(timeout=15)
        assert broker_pids_under(directory) == [], "a kafka JVM survived stop()"
