"""UDP backend: the dataplane behind one UDP socket (loopback, or real machines on a network)."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from netagg.service import BackgroundService
from netagg.udpbatch import enable_gro, recv_batch, send_segments, set_socket_buffers
from switch.core import Dataplane, Segments

if TYPE_CHECKING:
    from switch.pcap import Capture, Handle, HandleBatch

__all__ = ["UdpSwitch"]

log = logging.getLogger(__name__)


class UdpSwitch(BackgroundService):
    """Serve a :class:`Dataplane` on ``host:port`` until :meth:`stop` (or SIGINT/SIGTERM in the CLI)."""

    _thread_name = "netagg-switch"

    def __init__(
        self,
        dataplane: Dataplane,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rcvbuf: int = 64 << 20,
        sndbuf: int = 16 << 20,
        stats_file: Path | None = None,
        stats_interval: float = 0.0,
        multicast_ttl: int = 1,
        gro: bool = False,
        capture: Capture | None = None,
    ) -> None:
        super().__init__()
        self.dataplane = dataplane
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        set_socket_buffers(self.sock, rcvbuf, sndbuf)
        self.sock.bind((host, port))
        if family == socket.AF_INET:  # results to a multicast group leave by the listening interface
            if host not in ("", "0.0.0.0"):
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(host))
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, multicast_ttl)
        # Blocking, without a timeout: CPython polls before every call on a socket with a timeout (a
        # second system call per datagram). Receives ask not to wait (MSG_DONTWAIT) and the loop polls
        # only when nothing is queued; sends may wait for buffer space.
        self.sock.setblocking(True)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.gro = gro and enable_gro(self.sock)
        self.lock = threading.Lock()  # held per datagram; the SwitchAgent takes it to change jobs
        self.stats_file = stats_file
        self.stats_interval = stats_interval
        self.capture = capture
        """Where the loop records every datagram in and out (:mod:`switch.pcap`), or None; the loop
        closes it on the way out, as it does the socket."""

    def serve_forever(self) -> None:
        """Receive, aggregate and send until stopped. Writes the stats file on the way out."""
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        recv = self.sock.recvfrom_into
        send = self.sock.sendto
        handle: Handle = self.dataplane.handle
        handle_batch: HandleBatch = self.dataplane.handle_batch
        if self.capture is not None:  # only then: the loop without a capture calls the dataplane itself
            handle = self.capture.tap(handle)
            handle_batch = self.capture.tap_batch(handle_batch)
        sock = self.sock
        gro = self.gro
        lock = self.lock
        timed_stats = self.stats_interval > 0
        next_stats = time.monotonic() + self.stats_interval if timed_stats else float("inf")
        stopped = self._stop.is_set
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        dontwait = socket.MSG_DONTWAIT
        log.info("netagg switch serving on %s:%d", *self.address)
        try:
            while not stopped():
                try:
                    if gro:  # a run of same-size datagrams from one sender may come as one buffer
                        n, seg, src = recv_batch(sock, buf, dontwait)
                    else:
                        n, src = recv(buf, 0, dontwait)
                        seg = 0
                except BlockingIOError:  # nothing queued: wait (how often the stop flag is looked at)
                    poller.poll(200)
                    n = -1
                except OSError as exc:  # e.g. ICMP port unreachable surfacing on Linux: not fatal
                    log.debug("recv error %s", exc)
                    n = -1
                if n >= 0:
                    with lock:  # jobs may be installed or removed meanwhile (switch.agent)
                        outs = handle_batch(view[:n], seg, src) if seg else handle(view[:n], src)
                    for data, dests in outs:
                        for dest in dests:
                            try:
                                if isinstance(data, Segments):
                                    send_segments(sock, data.data, data.size, dest)
                                else:
                                    send(data, dest)
                            except OSError as exc:
                                self.dataplane.counters["send_errors"] += 1
                                log.debug("send to %s failed: %s", dest, exc)
                if timed_stats and time.monotonic() >= next_stats:
                    self.write_stats()
                    next_stats = time.monotonic() + self.stats_interval
        finally:
            self.write_stats()
            self.sock.close()
            if self.capture is not None:
                self.capture.close()
            log.info("netagg switch stopped: %s", json.dumps(self.dataplane.stats()))

    def write_stats(self) -> None:
        """Write the counters as JSON to the stats file (atomically), if there is one."""
        if self.stats_file is None:
            return
        tmp = self.stats_file.with_name(self.stats_file.name + ".tmp")
        tmp.write_text(
            json.dumps(
                {"address": list(self.address), "pid": os.getpid(), **self.dataplane.stats()}, indent=1
            )
        )
        tmp.replace(self.stats_file)
