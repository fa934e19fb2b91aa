"""Fixtures for testing netagg (and your own code on top of it): a lossy UDP relay.

:class:`LossyRelay` sits between workers and a switch like a NAT: each worker gets its own upstream
socket, so the switch still sees one address per worker. Every datagram, in each direction, is dropped,
duplicated or held back (reordered) with the probabilities given. Nothing here is a stand-in for the
switch or the workers: they run for real on either side.

The veth rig that drives BMv2 with raw frames is :class:`switch.bmv2.veth.VethPorts`.
"""

from __future__ import annotations

import collections
import functools
import heapq
import random
import selectors
import socket
import time
from collections.abc import Callable

from netagg.service import BackgroundService
from netagg.udpbatch import set_socket_buffers

__all__ = ["LossyRelay"]

_MAX_DATAGRAM = 1 << 16


def _sendto(sock: socket.socket, dest: tuple[str, int], data: bytes) -> int:
    return sock.sendto(data, dest)


class LossyRelay(BackgroundService):
    """Relay UDP between clients (on ``listen``) and ``upstream``, impairing the traffic.

    Args:
        listen: (host, port) to receive from workers on; port 0 picks a free one (see ``address``).
        upstream: the switch's (host, port).
        loss: probability that a datagram is dropped, per datagram and direction.
        dup: probability that a datagram is sent twice.
        reorder: probability that a datagram is held back 1-5 ms, so that later ones overtake it.
        seed: for a reproducible sequence of impairments.
    """

    _thread_name = "netagg-relay"

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        *,
        loss: float = 0.0,
        dup: float = 0.0,
        reorder: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, p in (("loss", loss), ("dup", dup), ("reorder", reorder)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {p}")
        self.upstream = upstream
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self._rng = random.Random(seed)
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        set_socket_buffers(self._front, 32 << 20, 32 << 20)
        self._front.bind(listen)
        self._front.setblocking(False)
        self.address: tuple[str, int] = self._front.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._front, selectors.EVENT_READ, None)
        self._held: list[tuple[float, int, Callable[[bytes], object], bytes]] = []
        self._tick = 0
        self.counters: collections.Counter[str] = collections.Counter()

    def _impair(self, data: bytes, send: Callable[[bytes], object], direction: str) -> None:
        rng = self._rng
        self.counters[f"{direction}_in"] += 1
        if rng.random() < self.loss:
            self.counters[f"{direction}_dropped"] += 1
            return
        copies = 2 if rng.random() < self.dup else 1
        self.counters[f"{direction}_duplicated"] += copies - 1
        for _ in range(copies):
            if rng.random() < self.reorder:
                self.counters[f"{direction}_reordered"] += 1
                self._tick += 1
                heapq.heappush(
                    self._held, (time.monotonic() + rng.uniform(0.001, 0.005), self._tick, send, data)
                )
            else:
                self._send(send, data)

    def _send(self, send: Callable[[bytes], object], data: bytes) -> None:
        try:
            send(data)
        except OSError:
            self.counters["send_errors"] += 1

    def _upstream_for(self, client: tuple[str, int]) -> socket.socket:
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        set_socket_buffers(up, 16 << 20, 16 << 20)
        up.connect(self.upstream)
        up.setblocking(False)
        self._sel.register(up, selectors.EVENT_READ, client)
        return up

    def serve_forever(self) -> None:
        ups: dict[tuple[str, int], socket.socket] = {}
        front = self._front
        try:
            while not self._stop.is_set():
                wait = 0.1 if not self._held else max(0.0, self._held[0][0] - time.monotonic())
                for key, _ in self._sel.select(wait):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    for _ in range(64):  # drain a burst before looking at the others
                        try:
                            if key.data is None:
                                data, client = front.recvfrom(_MAX_DATAGRAM)
                            else:
                                data = sock.recv(_MAX_DATAGRAM)
                        except (BlockingIOError, ConnectionRefusedError):
                            break
                        if key.data is None:
                            up = ups.get(client) or ups.setdefault(client, self._upstream_for(client))
                            self._impair(data, up.send, "up")
                        else:
                            self._impair(data, functools.partial(_sendto, front, key.data), "down")
                now = time.monotonic()
                while self._held and self._held[0][0] <= now:
                    _, _, send, data = heapq.heappop(self._held)
                    self._send(send, data)
        finally:
            for up in ups.values():
                up.close()
            front.close()
