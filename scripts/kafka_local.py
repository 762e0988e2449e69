#!/usr/bin/env python3
"""Local Apache Kafka 4.x (KRaft) assembled from Maven Central jars -- no Docker, no tarball.

For integration tests and for developers who want a broker on 127.0.0.1.

CLI (all commands but ``fetch`` take ``--dir``, default ``$SAVEGRESS_KAFKA_DIR`` or ``./.kafka``)::

    python scripts/kafka_local.py fetch [--version V]    # jars into the cache (needs Maven)
    python scripts/kafka_local.py start --nodes 1|3 --dir DIR [--base-port P] [--sasl-plain]
    python scripts/kafka_local.py status --dir DIR       # exit 0 if every node runs, else 3
    python scripts/kafka_local.py kill ID --dir DIR      # SIGKILL one node
    python scripts/kafka_local.py stop-node ID --dir DIR # SIGTERM one node and wait
    python scripts/kafka_local.py restart ID --dir DIR   # start it again, wait until in sync
    python scripts/kafka_local.py stop --dir DIR         # SIGTERM all nodes, SIGKILL leftovers

Python API (pytest fixtures)::

    with LocalKafkaCluster(tmp_path / "kafka", nodes=3, sasl_plain=True) as cluster:
        Producer({**cluster.client_config(), "acks": "all"})      # PLAINTEXT listener
        Producer(cluster.client_config(sasl=True))                 # SASL_PLAINTEXT, PLAIN
        cluster.warm_up_transactions()      # optional: create __transaction_state up front
        cluster.kill(2)                     # SIGKILL
        cluster.restart(2)                  # back and in sync
        cluster.stop_node(3)                # SIGTERM, controlled shutdown

Contracts:

* Jars live in ``$SAVEGRESS_KAFKA_CACHE/<version>/libs`` (default cache
  ``~/.cache/savegress-gw/kafka``). ``fetch`` is idempotent: with a complete cache it runs no
  process and touches no network. Only ``fetch`` needs ``mvn`` (it generates a pom in a temp dir
  and runs ``mvn -q -B dependency:copy-dependencies``); ``start`` fetches when the cache is empty.
* Nodes are combined ``broker,controller`` KRaft nodes with a static voter set, listening on
  127.0.0.1 only. Node ``i`` keeps its data, config and ``logs/server.log`` in ``DIR/node-i``;
  ``DIR/cluster.json`` records ids, ports, pids and bootstrap strings.
* ``start`` returns only when every node is ready: its client port accepts connections, metadata
  lists every broker, and the probe topic ``savegress-ready`` (one partition per node,
  RF = min(nodes, 3)) round-trips a record per partition produced with ``acks=all`` through a
  consumer group (which also creates ``__consumer_offsets``). On failure it stops every node
  it started and raises :class:`KafkaStartError` with the tail of the failing node's log.
* ``start`` on a directory holding a stopped cluster of the same shape resumes it (same ports
  and data); ``fresh=True`` / ``--fresh`` discards it instead.
* Processes started through the Python API (``detach=False``) are SIGKILLed by the kernel if the
  Python process dies (``setpriv --pdeathsig``, Linux) and stopped at interpreter exit; the CLI
  starts detached processes that outlive it (``stop`` ends them by pid).

Only the standard library is used, except the readiness/sync checks, which import
``confluent_kafka`` lazily (without it, readiness degrades to a TCP port check).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

DEFAULT_VERSION = "4.4.0"
# Maven version range used when DEFAULT_VERSION is not served: newest 4.x.
FALLBACK_RANGE = "[4.0.0,5.0.0)"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"  # Maven 3.8's super-POM would pick the ancient 2.8
DEFAULT_LOG4J2_VERSION = "2.25.5"  # used only if the Kafka POM brings no log4j-core (4.0.x)
COMPLETE_MARKER = ".complete"
CLUSTER_FILE = "cluster.json"
READY_TOPIC = "savegress-ready"

SASL_MECHANISM = "PLAIN"
SASL_USERNAME = "savegress"
SASL_PASSWORD = "savegress-secret"

DEFAULT_HEAP = "512m"
DEFAULT_START_TIMEOUT = 120.0
DEFAULT_STOP_TIMEOUT = 30.0
LOG_TAIL_LINES = 40


class KafkaLocalError(RuntimeError):
    """Base class of the errors raised by this module."""


class KafkaFetchError(KafkaLocalError):
    """The jars could not be resolved (Maven failed, or no usable 4.x version)."""


class KafkaStartError(KafkaLocalError):
    """A node did not start or become ready in time; the message holds its log tail."""


# --------------------------------------------------------------------------- fetch


@dataclass(frozen=True)
class FetchResult:
    """Outcome of :func:`fetch`: the Kafka version, its libs dir, and whether Maven ran."""

    version: str
    libs: Path
    downloaded: bool


def cache_root() -> Path:
    """Cache base dir: ``$SAVEGRESS_KAFKA_CACHE`` or ``~/.cache/savegress-gw/kafka``."""
    env = os.environ.get("SAVEGRESS_KAFKA_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "savegress-gw" / "kafka"


def libs_dir(version: str, root: Path | None = None) -> Path:
    """Where the jars of ``version`` live (complete only if it holds ``.complete``)."""
    return (root or cache_root()) / version / "libs"


def _alias_file(root: Path, requested: str) -> Path:
    return root / f"{requested}.resolved"


def find_cached(version: str | None = None, root: Path | None = None) -> FetchResult | None:
    """Return the complete cached libs for ``version`` (default: DEFAULT_VERSION or the
    fallback recorded for it), or None. Never touches the network."""
    root = root or cache_root()
    wanted = version or DEFAULT_VERSION
    candidates = [wanted]
    alias = _alias_file(root, wanted)
    if alias.is_file():
        candidates.append(alias.read_text().strip())
    for candidate in candidates:
        libs = libs_dir(candidate, root)
        if (libs / COMPLETE_MARKER).is_file():
            return FetchResult(candidate, libs, downloaded=False)
    return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so concurrent fetches (e.g. pytest-xdist) do not collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(
    version: str | None = None,
    root: Path | None = None,
    *,
    mvn: str = "mvn",
    java: str = "java",
) -> FetchResult:
    """Make the broker classpath for ``version`` available in the cache and return it.

    ``version=None`` means DEFAULT_VERSION, falling back to the newest 4.x that Maven Central
    serves if that is missing (the choice is remembered, so later calls stay offline). An
    explicit version is resolved exactly. Idempotent; raises :class:`KafkaFetchError`.
    """
    root = root or cache_root()
    hit = find_cached(version, root)
    if hit:
        return hit
    with _file_lock(root / ".fetch.lock"):
        hit = find_cached(version, root)
        if hit:
            return hit
        wanted = version or DEFAULT_VERSION
        specs = [wanted] if version else [DEFAULT_VERSION, FALLBACK_RANGE]
        errors: list[str] = []
        for spec in specs:
            try:
                resolved = _resolve_into_cache(spec, root, mvn=mvn, java=java)
            except KafkaFetchError as exc:
                errors.append(f"--- {spec}:\n{exc}")
                continue
            if resolved != wanted:
                _alias_file(root, wanted).write_text(resolved + "\n")
            return FetchResult(resolved, libs_dir(resolved, root), downloaded=True)
        raise KafkaFetchError("could not resolve Kafka from Maven:\n" + "\n".join(errors))


def _dependency_xml(group: str, artifact: str, version: str) -> str:
    return (
        "    <dependency><groupId>{}</groupId><artifactId>{}</artifactId>"
        "<version>{}</version></dependency>\n"
    ).format(*(xml_escape(part) for part in (group, artifact, version)))


def _pom_xml(dependencies: Sequence[tuple[str, str, str]], output_dir: Path) -> str:
    """A throw-away pom whose ``copy-dependencies`` copies the runtime closure to output_dir."""
    deps = "".join(_dependency_xml(*dep) for dep in dependencies)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.savegress</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId>
    <artifactId>maven-dependency-plugin</artifactId>
    <version>{DEPENDENCY_PLUGIN_VERSION}</version>
    <configuration>
      <outputDirectory>{xml_escape(str(output_dir))}</outputDirectory>
      <includeScope>runtime</includeScope>
    </configuration>
  </plugin></plugins></build>
</project>
"""


def _copy_dependencies(
    workdir: Path, dependencies: Sequence[tuple[str, str, str]], output_dir: Path, mvn: str
) -> None:
    """Run ``mvn -q -B dependency:copy-dependencies`` on a generated pom in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    pom = workdir / "pom.xml"
    pom.write_text(_pom_xml(dependencies, output_dir))
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as exc:
        raise KafkaFetchError(f"'{mvn}' not found: install Maven (apt-get install maven)") from exc
    except subprocess.TimeoutExpired as exc:
        raise KafkaFetchError(f"{' '.join(cmd)} timed out") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip().splitlines()
        raise KafkaFetchError("\n".join(output[-25:]) or f"mvn exited {proc.returncode}")


_JAR_RE = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d[\w.\-]*)\.jar$")


def _jar_versions(directory: Path) -> dict[str, str]:
    """Map artifactId -> version for the ``artifact-version.jar`` files in directory."""
    found: dict[str, str] = {}
    for jar in directory.glob("*.jar"):
        match = _JAR_RE.match(jar.name)
        if match:
            found[match["artifact"]] = match["version"]
    return found


def _broker_dependencies(jars: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """kafka_2.13 pinned, plus the SLF4J->Log4j2 binding aligned with what Kafka brings.

    The binding is a "releaseOnly" dependency of Kafka's build: it ships in the tarball but not
    in the POM, so without it the broker logs nothing (SLF4J NOP logger).
    """
    log4j = jars.get("log4j-core", DEFAULT_LOG4J2_VERSION)
    slf4j = jars.get("slf4j-api", "1.7.36")
    binding = "log4j-slf4j-impl" if slf4j.startswith("1.") else "log4j-slf4j2-impl"
    return [
        ("org.apache.kafka", "kafka_2.13", jars["kafka_2.13"]),
        ("org.apache.logging.log4j", binding, log4j),
        ("org.apache.logging.log4j", "log4j-api", log4j),
        ("org.apache.logging.log4j", "log4j-core", log4j),
        ("org.slf4j", "slf4j-api", slf4j),
    ]


def _resolve_into_cache(spec: str, root: Path, *, mvn: str, java: str) -> str:
    """Resolve ``kafka_2.13:<spec>`` (version or range) into the cache; return the version."""
    with tempfile.TemporaryDirectory(prefix="savegress-kafka-fetch-") as tmp_name:
        tmp = Path(tmp_name)
        probe = tmp / "probe-libs"
        _copy_dependencies(tmp / "pass1", [("org.apache.kafka", "kafka_2.13", spec)], probe, mvn)
        jars = _jar_versions(probe)
        if "kafka_2.13" not in jars:
            raise KafkaFetchError(f"kafka_2.13 jar missing after resolving {spec}")
        kafka_version = jars["kafka_2.13"]
        final = libs_dir(kafka_version, root)
        if (final / COMPLETE_MARKER).is_file():
            return kafka_version
        staging = final.parent / f".libs.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        _copy_dependencies(tmp / "pass2", _broker_dependencies(jars), staging, mvn)
    _smoke_test(staging, java)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    (final / COMPLETE_MARKER).write_text(kafka_version + "\n")
    return kafka_version


def _smoke_test(libs: Path, java: str) -> None:
    """The classpath must load the storage tool (core) and print a cluster id."""
    cmd = [java, "-Xmx128m", "-cp", str(libs / "*"), "kafka.tools.StorageTool", "random-uuid"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise KafkaFetchError(f"'{java}' not found: Kafka 4.x needs Java 17+") from exc
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    if proc.returncode != 0 or not re.fullmatch(r"[A-Za-z0-9_-]{22}", last[0]):
        raise KafkaFetchError(f"smoke test failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


# --------------------------------------------------------------------------- layout


def kafka_uuid() -> str:
    """A cluster id in Kafka's Uuid text form: 16 random bytes, URL-safe base64, no padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _candidate_ports() -> list[int]:
    """Shuffled ports in 10000-59999 outside the ephemeral range, so that a node restarted
    later does not find its port taken by some client's outgoing connection."""
    low, high = _ephemeral_range()
    ports = [p for p in range(10000, 60000) if not low <= p <= high]
    random.shuffle(ports)
    return ports


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (held open while choosing).

    Prefers ports outside the ephemeral range; falls back to kernel-assigned ones.
    """
    sockets: list[socket.socket] = []
    candidates = iter(_candidate_ports())
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", next(candidates, 0)))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class NodeInfo:
    """One combined broker+controller node as recorded in cluster.json."""

    node_id: int
    broker_port: int
    controller_port: int
    sasl_port: int | None = None
    pid: int | None = None


@dataclass
class ClusterState:
    """Everything needed to (re)start or signal the nodes of one cluster directory."""

    kafka_version: str
    libs: str
    cluster_id: str
    sasl_plain: bool
    heap: str
    nodes: list[NodeInfo]

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ClusterState:
        nodes = [
            NodeInfo(**{k: n.get(k) for k in NodeInfo.__dataclass_fields__}) for n in data["nodes"]
        ]
        return ClusterState(
            kafka_version=data["kafka_version"],
            libs=data["libs"],
            cluster_id=data["cluster_id"],
            sasl_plain=bool(data["sasl_plain"]),
            heap=data.get("heap", DEFAULT_HEAP),
            nodes=nodes,
        )


def allocate_nodes(count: int, base_port: int | None, sasl_plain: bool) -> list[NodeInfo]:
    """Ports for ``count`` nodes. With base_port P node i gets P+10*(i-1) (+0 client,
    +1 controller, +2 SASL); otherwise free ports are picked."""
    per_node = 3 if sasl_plain else 2
    if base_port is None:
        ports = free_ports(count * per_node)
    else:
        ports = []
        for index in range(count):
            ports.extend(base_port + 10 * index + offset for offset in range(per_node))
    nodes = []
    for index in range(count):
        chunk = ports[index * per_node : (index + 1) * per_node]
        nodes.append(NodeInfo(index + 1, chunk[0], chunk[1], chunk[2] if sasl_plain else None))
    return nodes


def replication_settings(node_count: int) -> tuple[int, int]:
    """(replication factor, min ISR) for internal topics: (1, 1) for one node, else (3, 2)."""
    replication = min(node_count, 3)
    return replication, (2 if replication >= 3 else 1)


def plain_jaas_config(username: str = SASL_USERNAME, password: str = SASL_PASSWORD) -> str:
    """Broker-side inline JAAS config for SASL/PLAIN with a single user."""
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{username}" password="{password}" user_{username}="{password}";'
    )


def server_properties(
    node: NodeInfo, nodes: Sequence[NodeInfo], node_dir: Path, sasl_plain: bool
) -> dict[str, str]:
    """server.properties for one combined node of a static-quorum cluster on 127.0.0.1."""
    replication, min_isr = replication_settings(len(nodes))
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    listeners = [f"PLAINTEXT://127.0.0.1:{node.broker_port}"]
    if sasl_plain:
        listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{node.sasl_port}")
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "controller.listener.names": "CONTROLLER",
        "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{node.controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
        ),
        "log.dirs": str(node_dir / "data"),
        # Internal topics: defaults (RF 3, min ISR 2) would break a single node.
        "offsets.topic.replication.factor": str(replication),
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": str(replication),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "default.replication.factor": str(replication),
        "group.initial.rebalance.delay.ms": "0",
        # Small and quiet: 2-core machines, <= 512 MiB heap.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "background.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        # Fast failure detection for broker-kill tests (defaults 2000 / 9000 / 30000 ms). Also
        # for one node: a SIGKILLed node's restart waits until its old session has expired.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "4000",
        "replica.lag.time.max.ms": "5000",
        "controller.quorum.election.timeout.ms": "1000",
        "controller.quorum.fetch.timeout.ms": "2000",
    }
    if sasl_plain:
        props.update(
            {
                "sasl.enabled.mechanisms": SASL_MECHANISM,
                "listener.name.sasl_plaintext.sasl.enabled.mechanisms": SASL_MECHANISM,
                "listener.name.sasl_plaintext.plain.sasl.jaas.config": plain_jaas_config(),
            }
        )
    return props


def _escape_property(value: str) -> str:
    """Escape for java.util.Properties.load(InputStream): ISO-8859-1 with \\uXXXX escapes."""
    out = []
    for char in value.replace("\\", "\\\\"):
        if " " <= char <= "~":
            out.append(char)
            continue
        encoded = char.encode("utf-16-be")
        out.extend(f"\\u{encoded[i : i + 2].hex()}" for i in range(0, len(encoded), 2))
    return "".join(out)


def _properties_text(props: Mapping[str, str]) -> str:
    return "".join(f"{key}={_escape_property(value)}\n" for key, value in props.items())


LOG4J2_PROPERTIES = """\
# Written by kafka_local.py: everything to stdout, which is redirected to node-N/logs/server.log.
status = warn
name = savegress-kafka-local
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:kafka.root.loglevel:-INFO}
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


# --------------------------------------------------------------------------- processes


def _proc_state(pid: int) -> str | None:
    """Linux process state letter from /proc, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _pid_is_node(pid: int, props_file: Path) -> bool:
    """True if ``pid`` is a live (non-zombie) kafka.Kafka process for ``props_file``.

    Guards against signalling an unrelated process that reused a recorded pid.
    """
    if sys.platform.startswith("linux"):
        if _proc_state(pid) in (None, "Z", "X"):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"kafka.Kafka" in cmdline and str(props_file).encode() in cmdline
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


RUN_MARKER = "===== kafka_local: starting node"


def _current_run_lines(path: Path) -> list[str]:
    """Lines of ``path`` written since the node was last launched (after RUN_MARKER)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return [f"(no log at {path})"]
    starts = [i for i, line in enumerate(lines) if line.startswith(RUN_MARKER)]
    return lines[starts[-1] :] if starts else lines


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the node's current run, preceded by its first ERROR line."""
    current = _current_run_lines(path)
    first_error = next((line for line in current if "] ERROR " in line), None)
    head = f"first error: {first_error}\n...\n" if first_error else ""
    return head + "\n".join(current[-lines:])


def ports_in_use(ports: Sequence[int]) -> list[int]:
    """The ports among ``ports`` that cannot be bound on 127.0.0.1 right now."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def _java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return "java"


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --`` where available: the kernel kills the node if the
    Python thread that started it dies (e.g. a SIGKILLed pytest), so no broker is orphaned."""
    setpriv = shutil.which("setpriv")
    if sys.platform.startswith("linux") and setpriv:
        return [setpriv, "--pdeathsig", "KILL", "--"]
    return []


# --------------------------------------------------------------------------- cluster


class LocalKafkaCluster:
    """1..N combined broker+controller KRaft nodes on 127.0.0.1, data under ``directory``.

    Lifecycle: ``start()`` (or ``with``) -> ``kill``/``stop_node``/``restart`` -> ``stop()``.
    ``start()`` creates a fresh cluster unless ``directory`` holds a stopped cluster with the
    same node count / SASL setting / version and ``fresh`` is False, in which case it resumes
    it (same ports, same data). Node ids are 1..N.

    ``detach=False`` (API default): nodes die with this Python process. ``detach=True`` (CLI):
    nodes outlive it and are managed through the pids in cluster.json.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        nodes: int = 1,
        *,
        base_port: int | None = None,
        sasl_plain: bool = False,
        version: str | None = None,
        cache: Path | None = None,
        heap: str = DEFAULT_HEAP,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        extra_properties: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] = (),
        detach: bool = False,
        fresh: bool = False,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.directory = Path(directory).resolve()
        self.node_count = nodes
        self.base_port = base_port
        self.sasl_plain = sasl_plain
        self.version = version
        self.cache = cache
        self.heap = heap
        self.start_timeout = start_timeout
        self.extra_properties = dict(extra_properties or {})
        self.jvm_options = list(jvm_options)
        self.detach = detach
        self.fresh = fresh
        self.java = _java_executable()
        self._state: ClusterState | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # ---- construction from an existing directory ---------------------------------

    @classmethod
    def attach(cls, directory: str | os.PathLike[str]) -> LocalKafkaCluster:
        """Manage the cluster recorded in ``directory/cluster.json`` (CLI use; detached)."""
        path = Path(directory).resolve() / CLUSTER_FILE
        if not path.is_file():
            raise KafkaLocalError(f"no {CLUSTER_FILE} in {path.parent}: run 'start' first")
        state = ClusterState.from_json(json.loads(path.read_text()))
        cluster = cls(
            path.parent,
            len(state.nodes),
            sasl_plain=state.sasl_plain,
            version=state.kafka_version,
            heap=state.heap,
            detach=True,
        )
        cluster._state = state
        return cluster

    # ---- properties ---------------------------------------------------------------

    @property
    def state(self) -> ClusterState:
        if self._state is None:
            raise KafkaLocalError("cluster not started")
        return self._state

    @property
    def node_ids(self) -> list[int]:
        return [node.node_id for node in self.state.nodes]

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:p1,...`` of the PLAINTEXT listeners."""
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.state.nodes)

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        """``127.0.0.1:s1,...`` of the SASL_PLAINTEXT listeners, or None without --sasl-plain."""
        if not self.state.sasl_plain:
            return None
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.state.nodes)

    def client_config(
        self, *, sasl: bool = False, username: str = SASL_USERNAME, password: str = SASL_PASSWORD
    ) -> dict[str, str]:
        """confluent-kafka config to reach the cluster (SASL/PLAIN listener if ``sasl``)."""
        if not sasl:
            return {"bootstrap.servers": self.bootstrap_servers}
        servers = self.sasl_bootstrap_servers
        if servers is None:
            raise KafkaLocalError("cluster was started without sasl_plain")
        return {
            "bootstrap.servers": servers,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": SASL_MECHANISM,
            "sasl.username": username,
            "sasl.password": password,
        }

    def node_dir(self, node_id: int) -> Path:
        return self.directory / f"node-{node_id}"

    def log_path(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "logs" / "server.log"

    def log_tail(self, node_id: int, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path(node_id), lines)

    def _node(self, node_id: int) -> NodeInfo:
        for node in self.state.nodes:
            if node.node_id == node_id:
                return node
        raise KafkaLocalError(f"no node {node_id}; nodes are {self.node_ids}")

    def _props_file(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "server.properties"

    # ---- context manager ----------------------------------------------------------

    def __enter__(self) -> LocalKafkaCluster:
        if self._state is None or not self.running_nodes():
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float | None = None) -> LocalKafkaCluster:
        """Format (if new) and start every node, then wait until the cluster is ready.

        Raises KafkaStartError (after stopping the nodes) if it is not ready in time. A new
        cluster on auto-picked ports that lost a port race is retried once on other ports.
        """
        libs = find_cached(self.version, self.cache) or fetch(self.version, self.cache)
        resumed = self._prepare_state(libs, force_fresh=False)
        try:
            return self._start_nodes(timeout)
        except KafkaStartError as exc:
            if resumed or self.base_port is not None or not self._port_race_lost(exc):
                raise
        self._prepare_state(libs, force_fresh=True)
        return self._start_nodes(timeout)

    def _start_nodes(self, timeout: float | None) -> LocalKafkaCluster:
        self._check_ports_free(self.state.nodes)
        self._write_configs()
        self._format_all()
        if not self.detach:
            atexit.register(self._stop_at_exit)
        try:
            for node in self.state.nodes:
                self._launch(node)
            self.wait_ready(timeout or self.start_timeout)
        except BaseException:
            self.stop(timeout=10)
            raise
        return self

    def _check_ports_free(self, nodes: Sequence[NodeInfo]) -> None:
        ports = [p for n in nodes for p in (n.broker_port, n.controller_port, n.sasl_port) if p]
        busy = ports_in_use(ports)
        if busy:
            hint = "choose another --base-port" if self.base_port else "start with --fresh"
            raise KafkaStartError(f"ports {busy} on 127.0.0.1 are in use ({hint})")

    def _port_race_lost(self, error: KafkaStartError) -> bool:
        """True if ``error`` or a node's log says one of its ports was taken."""
        return "are in use" in str(error) or any(
            "Address already in use" in "\n".join(_current_run_lines(self.log_path(node_id)))
            for node_id in self.node_ids
        )

    def _prepare_state(self, libs: FetchResult, *, force_fresh: bool) -> bool:
        """Resume a compatible stopped cluster in ``directory`` (returns True) or lay out a
        fresh one (returns False); sets ``self._state`` either way."""
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self._load_previous()
        if previous is not None and not force_fresh and self._compatible(previous, libs):
            previous.libs = str(libs.libs)
            previous.heap = self.heap
            self._state = previous
            return True
        self._wipe()
        self._state = ClusterState(
            kafka_version=libs.version,
            libs=str(libs.libs),
            cluster_id=kafka_uuid(),
            sasl_plain=self.sasl_plain,
            heap=self.heap,
            nodes=allocate_nodes(self.node_count, self.base_port, self.sasl_plain),
        )
        return False

    def _load_previous(self) -> ClusterState | None:
        path = self.directory / CLUSTER_FILE
        if not path.is_file():
            return None
        previous = ClusterState.from_json(json.loads(path.read_text()))
        for node in previous.nodes:
            props = self.node_dir(node.node_id) / "server.properties"
            if node.pid and _pid_is_node(node.pid, props):
                raise KafkaStartError(
                    f"a cluster is already running in {self.directory} (node {node.node_id}, "
                    f"pid {node.pid}); stop it first"
                )
        return previous

    def _compatible(self, previous: ClusterState, libs: FetchResult) -> bool:
        same_ports = self.base_port is None or previous.nodes[0].broker_port == self.base_port
        return (
            not self.fresh
            and len(previous.nodes) == self.node_count
            and previous.sasl_plain == self.sasl_plain
            and previous.kafka_version == libs.version
            and same_ports
        )

    def _wipe(self) -> None:
        """Remove what a previous cluster left in ``directory`` (only files this module owns)."""
        for child in self.directory.glob("node-*"):
            if child.is_dir() and re.fullmatch(r"node-\d+", child.name):
                shutil.rmtree(child)
        for name in (CLUSTER_FILE, "log4j2.properties"):
            (self.directory / name).unlink(missing_ok=True)

    def _write_configs(self) -> None:
        (self.directory / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        for node in self.state.nodes:
            node_dir = self.node_dir(node.node_id)
            (node_dir / "data").mkdir(parents=True, exist_ok=True)
            (node_dir / "logs").mkdir(parents=True, exist_ok=True)
            props = server_properties(node, self.state.nodes, node_dir, self.state.sasl_plain)
            props.update(self.extra_properties)
            self._props_file(node.node_id).write_text(_properties_text(props))
        self._save()

    def _java_command(self, main: str, args: Sequence[str], heap: str, level: str) -> list[str]:
        return [
            self.java,
            f"-Xmx{heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            # Kafka's own shutdown hook logs; log4j's hook would stop logging before it ran.
            "-Dlog4j2.shutdownHookEnabled=false",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            f"-Dkafka.root.loglevel={level}",
            *self.jvm_options,
            "-cp",
            str(Path(self.state.libs) / "*"),
            main,
            *args,
        ]

    def _format_all(self) -> None:
        """Format every node's storage in parallel (``--ignore-formatted``: resume-safe)."""
        procs = {}
        for node in self.state.nodes:
            props = str(self._props_file(node.node_id))
            args = ["format", "-t", self.state.cluster_id, "-c", props, "--ignore-formatted"]
            cmd = self._java_command("kafka.tools.StorageTool", args, "256m", "WARN")
            procs[node.node_id] = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        failures = []
        for node_id, proc in procs.items():
            try:
                output, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"node {node_id}: {output.decode(errors='replace')}")
        if failures:
            raise KafkaStartError("storage format failed:\n" + "\n".join(failures))

    def _launch(self, node: NodeInfo) -> None:
        """Start one node's JVM with stdout/stderr appended to its server.log."""
        props = str(self._props_file(node.node_id))
        cmd = self._java_command("kafka.Kafka", [props], self.state.heap, "INFO")
        if not self.detach:
            cmd = _pdeathsig_prefix() + cmd
        log = self.log_path(node.node_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n{RUN_MARKER} {node.node_id} =====\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.node_dir(node.node_id),
                start_new_session=True,
            )
        self._procs[node.node_id] = proc
        node.pid = proc.pid
        self._save()

    def _save(self) -> None:
        """Atomically write cluster.json (ids, ports, pids, bootstrap strings)."""
        state = self.state
        data = asdict(state)
        data["dir"] = str(self.directory)
        data["bootstrap_servers"] = self.bootstrap_servers
        data["sasl_bootstrap_servers"] = self.sasl_bootstrap_servers
        data["sasl"] = (
            {"mechanism": SASL_MECHANISM, "username": SASL_USERNAME, "password": SASL_PASSWORD}
            if state.sasl_plain
            else None
        )
        for entry in data["nodes"]:
            entry["dir"] = str(self.node_dir(entry["node_id"]))
            entry["log"] = str(self.log_path(entry["node_id"]))
        tmp = self.directory / f".{CLUSTER_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.directory / CLUSTER_FILE)

    # ---- process control ----------------------------------------------------------

    def is_running(self, node_id: int) -> bool:
        """True if node ``node_id``'s JVM is alive (reaps it if it was our child)."""
        proc = self._procs.get(node_id)
        if proc is not None:
            return proc.poll() is None
        node = self._node(node_id)
        return node.pid is not None and _pid_is_node(node.pid, self._props_file(node_id))

    def running_nodes(self) -> list[int]:
        return [node_id for node_id in self.node_ids if self.is_running(node_id)]

    def status(self) -> dict[int, bool]:
        """node id -> running."""
        return {node_id: self.is_running(node_id) for node_id in self.node_ids}

    def _signal(self, node_id: int, sig: int) -> None:
        if self.is_running(node_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._node(node_id).pid or -1, sig)

    def _wait_exit(self, node_ids: Sequence[int], deadline: float) -> list[int]:
        """Wait until the nodes exit or the deadline passes; return those still running."""
        remaining = list(node_ids)
        while remaining:
            remaining = [node_id for node_id in remaining if self.is_running(node_id)]
            if not remaining or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        return remaining

    def _forget(self, node_id: int) -> None:
        self._procs.pop(node_id, None)
        self._node(node_id).pid = None

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id`` and wait until it is gone (no clean shutdown)."""
        self._signal(node_id, signal.SIGKILL)
        if self._wait_exit([node_id], time.monotonic() + 30):
            raise KafkaLocalError(f"node {node_id} survived SIGKILL")
        self._forget(node_id)
        self._save()

    def stop_node(self, node_id: int, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM node ``node_id`` (controlled shutdown), SIGKILL it after ``timeout``."""
        self._stop_nodes([node_id], timeout)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM every node at once, wait up to ``timeout``, SIGKILL leftovers. Idempotent."""
        if self._state is None:
            return
        self._stop_nodes(self.node_ids, timeout)
        if not self.detach:
            atexit.unregister(self._stop_at_exit)

    def _stop_nodes(self, node_ids: Sequence[int], timeout: float) -> None:
        for node_id in node_ids:
            self._signal(node_id, signal.SIGTERM)
        leftovers = self._wait_exit(node_ids, time.monotonic() + timeout)
        for node_id in leftovers:
            self._signal(node_id, signal.SIGKILL)
        if self._wait_exit(leftovers, time.monotonic() + 30):
            raise KafkaLocalError(f"nodes {leftovers} survived SIGKILL")
        for node_id in node_ids:
            self._forget(node_id)
        self._save()

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout=10)

    def restart(self, node_id: int, timeout: float | None = None) -> None:
        """Start a stopped/killed node again (same dir, ports, data; no re-format) and wait
        until it is registered and back in the ISR of every partition it replicates.

        Raises KafkaStartError on timeout (the node is left running; ``stop()`` ends it)."""
        if self.is_running(node_id):
            raise KafkaLocalError(f"node {node_id} is still running")
        self._forget(node_id)
        deadline = time.monotonic() + (timeout or self.start_timeout)
        self._check_ports_free([self._node(node_id)])
        self._launch(self._node(node_id))
        self._wait_port(self._node(node_id), deadline)
        if _confluent_available():
            self._wait_brokers(set(self.running_nodes()), deadline)
            self.wait_in_sync(node_id, deadline - time.monotonic())

    # ---- readiness ----------------------------------------------------------------

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Block until every node serves clients and a probe topic round-trips with acks=all."""
        deadline = time.monotonic() + timeout
        for node in self.state.nodes:
            self._wait_port(node, deadline)
        if not _confluent_available():
            return
        self._wait_brokers(set(self.node_ids), deadline)
        self._probe_round_trip(self.client_config(), deadline)
        if self.state.sasl_plain:
            self._wait_sasl(deadline)

    def _check_alive(self, node_id: int) -> None:
        if not self.is_running(node_id):
            proc = self._procs.get(node_id)
            code = proc.returncode if proc is not None else "?"
            raise KafkaStartError(
                f"kafka node {node_id} exited (code {code}); last lines of "
                f"{self.log_path(node_id)}:\n{self.log_tail(node_id)}"
            )

    def _timeout_error(self, what: str, node_ids: Sequence[int]) -> KafkaStartError:
        tails = "\n".join(
            f"--- node {node_id} ({self.log_path(node_id)}):\n{self.log_tail(node_id, 25)}"
            for node_id in node_ids
        )
        return KafkaStartError(f"timed out waiting for {what}\n{tails}")

    def _wait_port(self, node: NodeInfo, deadline: float) -> None:
        """In KRaft the client port opens only once the broker is unfenced."""
        while True:
            self._check_alive(node.node_id)
            try:
                with socket.create_connection(("127.0.0.1", node.broker_port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise self._timeout_error(
                    f"node {node.node_id} to listen on {node.broker_port}", [node.node_id]
                )
            time.sleep(0.2)

    def _wait_brokers(self, expected: set[int], deadline: float) -> None:
        """Until cluster metadata lists every broker in ``expected``."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(_internal(self.client_config()))
        seen: set[int] = set()
        while True:
            for node_id in expected:
                self._check_alive(node_id)
            with contextlib.suppress(Exception):
                seen = set(admin.list_topics(timeout=_remaining(deadline, 5)).brokers)
                if expected <= seen:
                    return
            if time.monotonic() >= deadline:
                missing = sorted(expected - seen)
                raise self._timeout_error(f"brokers {missing} in metadata", missing)
            time.sleep(0.2)

    def _probe_round_trip(self, config: Mapping[str, str], deadline: float) -> None:
        """Create the probe topic, produce one record per partition with acks=all and read
        them back through a consumer group (this also creates __consumer_offsets)."""
        replication, min_isr = replication_settings(self.node_count)
        _ensure_topic(config, READY_TOPIC, self.node_count, replication, min_isr, deadline)
        token = uuid.uuid4().hex
        try:
            _produce_probe(config, READY_TOPIC, self.node_count, token, deadline)
            _consume_probe(config, READY_TOPIC, self.node_count, token, deadline)
        except KafkaLocalError as exc:
            raise self._timeout_error(f"probe round trip ({exc})", self.node_ids) from exc

    def _wait_sasl(self, deadline: float) -> None:
        """Until the SASL listener authenticates the configured user."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(_internal(self.client_config(sasl=True)))
        while True:
            with contextlib.suppress(Exception):
                if set(self.node_ids) <= set(admin.list_topics(timeout=5).brokers):
                    return
            if time.monotonic() >= deadline:
                raise self._timeout_error("SASL/PLAIN listener", self.node_ids)
            time.sleep(0.2)

    def warm_up_transactions(self, timeout: float = 60.0) -> None:
        """Commit one transaction on the probe topic, so that ``__transaction_state`` exists
        (RF 1 or 3) before exactly-once tests start; otherwise their first
        ``init_transactions()`` pays for its creation. Raises KafkaLocalError on failure."""
        from confluent_kafka import Producer

        transactional_id = f"savegress-warmup-{uuid.uuid4().hex}"
        producer = Producer(
            {**_internal(self.client_config()), "transactional.id": transactional_id}
        )
        try:
            producer.init_transactions(timeout)
            producer.begin_transaction()
            producer.produce(READY_TOPIC, value=b"warm-up")
            producer.commit_transaction(timeout)
        except Exception as exc:
            raise KafkaLocalError(f"transaction warm-up failed: {exc}") from exc

    def wait_in_sync(self, node_id: int, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Until ``node_id`` is in the ISR of every partition whose replicas include it."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(_internal(self.client_config()))
        deadline = time.monotonic() + timeout
        lagging: list[str] = []
        while True:
            self._check_alive(node_id)
            with contextlib.suppress(Exception):
                lagging = _partitions_missing(admin.list_topics(timeout=5), node_id)
                if not lagging:
                    return
            if time.monotonic() >= deadline:
                raise self._timeout_error(f"node {node_id} in ISR of {lagging[:5]}", [node_id])
            time.sleep(0.3)


# --------------------------------------------------------------------------- client helpers


def _confluent_available() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def _internal(config: Mapping[str, str]) -> dict[str, Any]:
    """Config for this module's own short-lived clients: only librdkafka errors are logged."""
    return {**config, "log_level": 3}


def _remaining(deadline: float, cap: float) -> float:
    return max(0.5, min(cap, deadline - time.monotonic()))


def _partitions_missing(metadata: Any, node_id: int) -> list[str]:
    """``topic-partition`` names replicated on node_id where it is not (yet) in the ISR."""
    missing = []
    for topic in metadata.topics.values():
        for partition in topic.partitions.values():
            if node_id in partition.replicas and node_id not in partition.isrs:
                missing.append(f"{topic.topic}-{partition.id}")
    return missing


def _ensure_topic(
    config: Mapping[str, str],
    topic: str,
    partitions: int,
    replication: int,
    min_isr: int,
    deadline: float,
) -> None:
    """Create ``topic`` unless it exists; retry transient errors until the deadline."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_internal(config))
    new = NewTopic(topic, partitions, replication, config={"min.insync.replicas": str(min_isr)})
    while True:
        future = admin.create_topics([new], request_timeout=_remaining(deadline, 15))[topic]
        try:
            future.result()
            return
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if time.monotonic() >= deadline:
                raise KafkaStartError(f"cannot create {topic}: {exc}") from exc
        time.sleep(0.5)


def _produce_probe(
    config: Mapping[str, str], topic: str, partitions: int, token: str, deadline: float
) -> None:
    from confluent_kafka import Producer

    errors: list[str] = []
    timeout_ms = int(_remaining(deadline, 120) * 1000)
    producer = Producer({**_internal(config), "acks": "all", "message.timeout.ms": timeout_ms})
    for partition in range(partitions):
        producer.produce(
            topic,
            value=token.encode(),
            partition=partition,
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
        )
    if producer.flush(_remaining(deadline, 120)) or errors:
        raise KafkaLocalError(f"produce with acks=all failed: {errors or 'flush timeout'}")


def _consume_probe(
    config: Mapping[str, str], topic: str, expected: int, token: str, deadline: float
) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            **_internal(config),
            "group.id": f"savegress-ready-{token}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    found = 0
    try:
        consumer.subscribe([topic])
        while found < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            if message.value() == token.encode():
                found += 1
        if found < expected:
            raise KafkaLocalError(f"consumed {found}/{expected} probe records")
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()


# --------------------------------------------------------------------------- CLI


def _default_dir() -> str:
    return os.environ.get("SAVEGRESS_KAFKA_DIR", ".kafka")


def _cmd_fetch(args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = fetch(args.version)
    verb = "fetched" if result.downloaded else "cached"
    print(f"kafka {result.version} {verb} in {time.monotonic() - started:.1f}s: {result.libs}")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    started = time.monotonic()
    cluster = LocalKafkaCluster(
        args.dir,
        args.nodes,
        base_port=args.base_port,
        sasl_plain=args.sasl_plain,
        version=args.version,
        heap=args.heap,
        start_timeout=args.timeout,
        detach=True,
        fresh=args.fresh,
    )
    cluster.start()
    print(
        f"kafka {cluster.state.kafka_version}: {args.nodes} node(s) ready in "
        f"{time.monotonic() - started:.1f}s"
    )
    print(f"bootstrap.servers={cluster.bootstrap_servers}")
    if cluster.sasl_bootstrap_servers:
        print(
            f"sasl bootstrap.servers={cluster.sasl_bootstrap_servers} "
            f"(SASL_PLAINTEXT, PLAIN, {SASL_USERNAME}/{SASL_PASSWORD})"
        )
    print(f"state: {cluster.directory / CLUSTER_FILE}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalKafkaCluster.attach(args.dir)
    status = cluster.status()
    for node in cluster.state.nodes:
        state = "running" if status[node.node_id] else "stopped"
        print(
            f"node {node.node_id}: {state} pid={node.pid} port={node.broker_port}"
            + (f" sasl_port={node.sasl_port}" if node.sasl_port else "")
        )
    print(f"bootstrap.servers={cluster.bootstrap_servers}")
    return 0 if all(status.values()) else 3


def _cmd_node(args: argparse.Namespace) -> int:
    cluster = LocalKafkaCluster.attach(args.dir)
    started = time.monotonic()
    if args.command == "kill":
        cluster.kill(args.node_id)
    elif args.command == "stop-node":
        cluster.stop_node(args.node_id, args.timeout)
    else:
        cluster.restart(args.node_id, args.timeout)
    print(f"{args.command} node {args.node_id}: done in {time.monotonic() - started:.1f}s")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    cluster = LocalKafkaCluster.attach(args.dir)
    started = time.monotonic()
    cluster.stop(args.timeout)
    print(f"stopped {len(cluster.node_ids)} node(s) in {time.monotonic() - started:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Local Apache Kafka 4.x (KRaft) from Maven Central jars."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_fetch = sub.add_parser("fetch", help="resolve the broker jars into the cache")
    p_fetch.add_argument(
        "--version",
        help=f"exact Kafka version (default {DEFAULT_VERSION}, "
        "falling back to the newest 4.x served)",
    )
    p_fetch.set_defaults(func=_cmd_fetch)

    p_start = sub.add_parser("start", help="format and start a cluster, wait until ready")
    p_start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    p_start.add_argument("--dir", default=_default_dir())
    p_start.add_argument("--base-port", type=int, help="node i uses P+10*(i-1) .. +2")
    p_start.add_argument(
        "--sasl-plain",
        action="store_true",
        help=f"add a SASL_PLAINTEXT/PLAIN listener ({SASL_USERNAME})",
    )
    p_start.add_argument("--version", help="Kafka version (default: cached/fetched default)")
    p_start.add_argument("--heap", default=DEFAULT_HEAP, help="JVM -Xmx per node")
    p_start.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    p_start.add_argument("--fresh", action="store_true", help="discard data of a previous run")
    p_start.set_defaults(func=_cmd_start)

    for name, helptext, timeout in (
        ("kill", "SIGKILL one node", DEFAULT_STOP_TIMEOUT),
        ("stop-node", "SIGTERM one node and wait", DEFAULT_STOP_TIMEOUT),
        (
            "restart",
            "start a stopped node again and wait until it is in sync",
            DEFAULT_START_TIMEOUT,
        ),
    ):
        p_node = sub.add_parser(name, help=helptext)
        p_node.add_argument("node_id", type=int)
        p_node.add_argument("--dir", default=_default_dir())
        p_node.add_argument("--timeout", type=float, default=timeout)
        p_node.set_defaults(func=_cmd_node)

    p_stop = sub.add_parser("stop", help="stop all nodes (SIGTERM, then SIGKILL)")
    p_stop.add_argument("--dir", default=_default_dir())
    p_stop.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT)
    p_stop.set_defaults(func=_cmd_stop)

    p_status = sub.add_parser("status", help="show nodes; exit 3 unless all are running")
    p_status.add_argument("--dir", default=_default_dir())
    p_status.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KafkaLocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
