"""A TCP relay in front of every HA node's Raft port, to cut one node off the others.

Each node listens on its ``bind_address`` and is known to the others by its
``advertise_address``, where :class:`RaftLinks` listens and relays to it. The side of a pysyncobj
link that connects sends its own advertised address as its first frame (a native 4-byte length,
then ``zlib(pickle(address))``), so the relay knows both ends of every link. :meth:`RaftLinks.isolate`
closes every link with that node at one end and refuses new ones until :meth:`RaftLinks.heal`:
a network partition of the Raft port only, while the node's pipeline still reaches its sink.
"""

from __future__ import annotations

import socket
import struct
import threading
import zlib

from pysyncobj import pickle as raft_pickle


class RaftLinks:
    """Relays ``advertised address -> 127.0.0.1:real port`` for each node of one cluster."""

    def __init__(self, real_ports: list[int]) -> None:
        self._listeners: dict[str, socket.socket] = {}
        self.targets: dict[str, int] = {}
        """Advertised address (``127.0.0.1:<relay port>``) → the node's real Raft port."""
        for port in real_ports:
            listener = socket.create_server(("127.0.0.1", 0))
            address = f"127.0.0.1:{listener.getsockname()[1]}"
            self._listeners[address], self.targets[address] = listener, port
        self._isolated: set[str] = set()
        self._links: list[tuple[str, str, socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        for address, listener in self._listeners.items():
            threading.Thread(target=self._accept, args=(address, listener), daemon=True).start()

    @property
    def advertised(self) -> list[str]:
        return list(self.targets)

    def isolate(self, address: str) -> None:
        """Cut every link of the node advertised at ``address``; refuse its new ones."""
        with self._lock:
            self._isolated.add(address)
            cut = [link for link in self._links if address in link[:2]]
            self._links = [link for link in self._links if address not in link[:2]]
        for _, _, client, upstream in cut:
            _close(client, upstream)

    def heal(self) -> None:
        with self._lock:
            self._isolated.clear()

    def close(self) -> None:
        for listener in self._listeners.values():
            listener.close()
        with self._lock:
            links, self._links = self._links, []
        for _, _, client, upstream in links:
            _close(client, upstream)

    def _accept(self, target: str, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(target, client), daemon=True).start()

    def _relay(self, target: str, client: socket.socket) -> None:
        try:
            first = _read_frame(client)
            initiator = str(raft_pickle.loads(zlib.decompress(first[4:])))
            upstream = socket.create_connection(("127.0.0.1", self.targets[target]), timeout=5)
            upstream.settimeout(None)
        except (OSError, zlib.error, ValueError, EOFError):
            client.close()
            return
        with self._lock:
            if self._isolated & {initiator, target}:
                _close(client, upstream)
                return
            self._links.append((initiator, target, client, upstream))
        upstream.sendall(first)
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        _pump(upstream, client)


def _read_frame(sock: socket.socket) -> bytes:
    header = _read_exactly(sock, 4)
    (length,) = struct.unpack("i", header)
    return header + _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the link closed during its first frame")
        data += chunk
    return data


def _pump(source: socket.socket, destination: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            destination.sendall(chunk)
    except OSError:
        pass
    _close(source, destination)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
