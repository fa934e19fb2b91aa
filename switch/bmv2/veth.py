"""A veth rig for driving a switch with raw Ethernet frames (the BMv2 conformance target, bench/bmv2.py).

Not part of the switch itself: a test and benchmark fixture, kept beside the BMv2 driver it feeds.
Needs root.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

__all__ = ["VethPorts"]


class VethPorts:
    """``count`` veth pairs: ``<tag>c<i>``, whose frames this process sends and receives through a raw
    socket (``socks[i]``), and ``<tag>s<i>``, port ``i + 1`` of the switch under test (:meth:`ports`).
    Both ends are up, without IPv6 (so the kernel sends nothing of its own into them). Needs root;
    interface names are at most 15 characters, so keep ``tag`` to 10. :meth:`close`, or leaving the
    ``with`` block, deletes the pairs; if making one fails, those already made are deleted."""

    def __init__(self, tag: str, count: int, *, rcvbuf: int | None = None) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.socks: list[socket.socket] = []
        try:
            for i in range(count):
                outer, inner = f"{tag}c{i}", f"{tag}s{i}"
                _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
                self.pairs.append((outer, inner))
                for name in (outer, inner):
                    _run("sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1")
                    _run("ip", "link", "set", name, "up")
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
                self.socks.append(s)
                if rcvbuf:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                s.bind((outer, 0))
                s.setblocking(False)
        except BaseException:
            self.close()
            raise

    def ports(self) -> dict[int, str]:
        """Switch port number → the interface to give it."""
        return {i + 1: inner for i, (_, inner) in enumerate(self.pairs)}

    def received(self, i: int) -> Iterator[bytes]:
        """The frames queued on ``socks[i]`` that came in from the switch's end; frames going out of
        this end (which the kernel shows a raw socket when another socket sent them) are skipped."""
        sock = self.socks[i]
        while True:
            try:
                frame, addr = sock.recvfrom(65535)
            except BlockingIOError:
                return
            if addr[2] != socket.PACKET_OUTGOING:
                yield frame

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []
        for outer, _ in self.pairs:  # deleting one end deletes the pair
            subprocess.run(["ip", "link", "del", outer], capture_output=True, check=False)
        self.pairs = []

    def __enter__(self) -> VethPorts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.returncode}")
