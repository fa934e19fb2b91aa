"""Conformance targets: each runs a :class:`~tests.conformance.cases.Case` from a fresh switch and returns
an :data:`Outcome` — per datagram sent, every frame the switch put on a port (egress port and the whole
frame, Ethernet/IPv4/UDP/netagg), and at the end every counter.

:class:`PythonTarget` drives the Python switch's backend (:class:`switch.backend.PythonBackend` over a
:class:`~switch.core.Dataplane`), through :meth:`Dataplane.handle` one datagram at a time or through
:meth:`Dataplane.handle_batch` with runs of same-size datagrams from one host (what GRO hands the UDP
switch); :class:`Bmv2Target` sends real frames into ``simple_switch`` over veth pairs (a
:class:`switch.daemon.Bmv2Switch`, the same assembly as ``netagg bmv2``) and captures what comes out.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from netagg.protocol import DEFAULT_PORT, MsgType
from netagg.scapy_layer import NetAgg
from switch.backend import PythonBackend
from switch.core import Dataplane, JobConfig, Segments
from switch.ethernet import mac_bytes, udp_frame
from tests.conformance.cases import (
    ELEMENTS,
    HOSTS,
    JOB,
    PARENT_KEY,
    PARENT_WORKER,
    SLOT_BASE,
    SLOTS,
    SWITCH_IP,
    SWITCH_MAC,
    WORKERS,
    Case,
)

__all__ = ["Bmv2Target", "Outcome", "PythonTarget", "compare", "job_for", "port_of"]

#: (per datagram: sorted (egress port, frame as hex); {"counters": {...}, "drops": {...}}, nonzero only).
Outcome = tuple[list[list[tuple[int, str]]], dict[str, dict[str, int]]]

_FRAME_OVERHEAD = 14 + 20 + 8  # Ethernet + IPv4 (no options) + UDP
_PAYLOAD = _FRAME_OVERHEAD  # where the netagg header starts in a frame
_INCARNATION = slice(_PAYLOAD + 12, _PAYLOAD + 16)  # a JOIN's seq field: its incarnation


def job_for(case: Case) -> JobConfig:
    """The one job every target installs for ``case``."""
    return JobConfig(
        job_id=JOB,
        workers=WORKERS,
        slots=SLOTS,
        elements=ELEMENTS,
        slot_base=SLOT_BASE,
        addresses=tuple((HOSTS[h][0], HOSTS[h][1]) for h in ("w0", "w1")),
        total_workers=4 if case.tree else None,
        parent=(HOSTS["p"][0], HOSTS["p"][1]) if case.tree else None,
        parent_worker=PARENT_WORKER,
        key=case.key,
        parent_key=PARENT_KEY if case.tree else 0,
    )


def port_of(ip: str) -> int:
    """The switch port the host with ``ip`` is behind (HOSTS in order, from port 1)."""
    return next(i + 1 for i, (h_ip, _, _) in enumerate(HOSTS.values()) if h_ip == ip)


def frame_from(host: str, payload: bytes) -> bytes:
    """``payload`` as the frame ``host`` sends the switch."""
    ip, port, mac = HOSTS[host]
    return udp_frame(mac_bytes(mac), ip, port, mac_bytes(SWITCH_MAC), SWITCH_IP, DEFAULT_PORT, payload)


def _is_join_from_switch(frame: bytes) -> bool:
    return (
        len(frame) >= _INCARNATION.stop
        and frame[12:14] == b"\x08\x00"
        and frame[23] == 17
        and frame[26:30] == socket.inet_aton(SWITCH_IP)
        and frame[_PAYLOAD + 1] == MsgType.JOIN
    )


def _key(frames: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
    """Sorted (port, hex); the random incarnation of a JOIN to the parent reads as 0 (the UDP checksum
    is 0 in both implementations and the IPv4 checksum does not cover the payload)."""
    key = []
    for port, frame in frames:
        shown = frame
        if _is_join_from_switch(frame):
            shown = frame[: _INCARNATION.start] + b"\0\0\0\0" + frame[_INCARNATION.stop :]
        key.append((port, shown.hex()))
    return sorted(key)


def _incarnation(frames: list[tuple[int, bytes]], last: int) -> int:
    """The incarnation of this switch's latest JOIN to its parent among ``frames`` (else ``last``)."""
    for _, frame in frames:
        if _is_join_from_switch(frame):
            last = int.from_bytes(frame[_INCARNATION], "big")
    return last


#: Counters the implementations legitimately count differently, left out of the comparison. bytes_out:
#: BMv2 counts a reply by standard_metadata.packet_length, the length of the packet it was made from (a
#: PENDING made from a full CONTRIB counts the CONTRIB's bytes); the Python switch counts what it sends.
#: packets_out is compared.
NOT_COMPARED = frozenset({"bytes_out"})


def _comparable(counters: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Every nonzero counter but :data:`NOT_COMPARED`."""
    return {
        part: {k: v for k, v in values.items() if v and k not in NOT_COMPARED}
        for part, values in counters.items()
    }


def _runs(case: Case) -> Iterator[list[int]]:
    """Indices of ``case.sends`` in runs that GRO could hand over at once: consecutive datagrams of one
    size from one host (a datagram that depends on the switch's last JOIN goes alone)."""
    run: list[int] = []
    for i, send in enumerate(case.sends):
        if run:
            first = case.sends[run[0]]
            same = (
                not callable(send.payload)
                and not callable(first.payload)
                and send.host == first.host
                and len(send.data(0)) == len(first.data(0))
            )
            if not same:
                yield run
                run = []
        run.append(i)
    if run:
        yield run


def batched(case: Case, outcome: Outcome) -> Outcome:
    """``outcome`` (one entry per datagram) with each of :func:`_runs`' runs merged into one entry:
    what :class:`PythonTarget` with ``batch=True`` returns for the same case."""
    per_send, counters = outcome
    merged = [sorted(x for i in run for x in per_send[i]) for run in _runs(case)]
    return merged, counters


class PythonTarget:
    """The Python switch's dataplane behind its backend, fed in process (no sockets).

    The Python switch emits UDP datagrams; the frames compared are those its Ethernet backend
    (:class:`switch.ethernet.EthernetSwitch`) makes of them: :func:`udp_frame` from the switch's
    addresses to the destination host's MAC, on the port that host is behind. (EthernetSwitch learns
    the MAC and port from the host's own frames, BMv2 has them in its tables: on this rig, where every
    host has sent before it is answered, both give the same.) Counters: the Python switch counts UDP
    payload bytes, the P4 program whole frames: ``bytes_in`` is given here as frame bytes (+42 per
    packet); ``bytes_out`` is not compared (:data:`NOT_COMPARED`)."""

    def __init__(self, *, batch: bool = False) -> None:
        self.batch = batch

    def run(self, case: Case) -> Outcome:
        dataplane = Dataplane()
        backend = PythonBackend(dataplane, threading.Lock())
        backend.install(job_for(case))
        runs = list(_runs(case)) if self.batch else [[i] for i in range(len(case.sends))]
        per_send = []
        incarnation = 0
        for run in runs:
            host = case.sends[run[0]].host
            ip, port, _ = HOSTS[host]
            datas = [case.sends[i].data(incarnation) for i in run]
            if len(datas) > 1:
                outs = dataplane.handle_batch(b"".join(datas), len(datas[0]), (ip, port))
            else:
                outs = dataplane.handle(datas[0], (ip, port))
            frames = []
            for data, dests in outs:
                raw = bytes(data.data if isinstance(data, Segments) else data)
                size = data.size if isinstance(data, Segments) else len(raw)  # a GSO send: split it
                for (d_ip, d_port), off in ((d, o) for d in dests for o in range(0, len(raw), size)):
                    payload = raw[off : off + size]
                    mac = HOSTS[next(h for h, v in HOSTS.items() if v[0] == d_ip)][2]
                    frame = udp_frame(
                        mac_bytes(SWITCH_MAC), SWITCH_IP, DEFAULT_PORT, mac_bytes(mac), d_ip, d_port, payload
                    )
                    frames.append((port_of(d_ip), frame))
            incarnation = _incarnation(frames, incarnation)
            per_send.append(_key(frames))
        counters = backend.counters()
        c = counters["counters"]
        c["bytes_in"] = c.get("bytes_in", 0) + _FRAME_OVERHEAD * c.get("packets_in", 0)
        return per_send, _comparable(counters)


class Bmv2Target:
    """simple_switch with netagg's program; each host is a veth pair whose outer end this process
    drives with raw frames (:class:`switch.bmv2.veth.VethPorts`; needs root). Interfaces are named
    ``<tag>c<i>``/``<tag>s<i>`` and deleted by :meth:`close`. Every frame that comes out is kept, from
    the switch's address or not (ordinary traffic must not leak out of the aggregator)."""

    def __init__(self, json_path: Path, *, tag: str | None = None) -> None:
        from switch.bmv2.veth import VethPorts

        self.json_path = json_path
        self.veth = VethPorts(tag or f"nc{os.getpid() % 10000}", len(HOSTS))
        self.socks = dict(zip(HOSTS, self.veth.socks, strict=True))

    def run(self, case: Case, quiet: float = 0.15, first_wait: float = 0.4) -> Outcome:
        """A fresh simple_switch per case (no state carries over), then each datagram in turn."""
        from switch.bmv2 import HostPort
        from switch.daemon import Bmv2Switch, Bmv2SwitchOptions

        hosts = tuple(HostPort(ip, mac, port_of(ip)) for ip, _, mac in HOSTS.values())
        options = Bmv2SwitchOptions(
            self.json_path, self.veth.ports(), SWITCH_IP, SWITCH_MAC, hosts, jobs=(job_for(case),)
        )
        with Bmv2Switch(options) as switch:
            self._collect(0.05, 0.05)  # whatever the start left queued
            per_send = []
            incarnation = 0
            for send in case.sends:
                self.socks[send.host].send(frame_from(send.host, send.data(incarnation)))
                frames = self._collect(quiet, first_wait)
                incarnation = _incarnation(frames, incarnation)
                per_send.append(_key(frames))
            return per_send, _comparable(switch.backend.counters())

    def _collect(self, quiet: float, first_wait: float) -> list[tuple[int, bytes]]:
        """Frames from the switch until none came for ``quiet`` s (``first_wait``: the first)."""
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + first_wait
        poller = select.poll()
        by_fd = {s.fileno(): i for i, s in enumerate(self.veth.socks)}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                for frame in self.veth.received(by_fd[fd]):
                    got.append((by_fd[fd] + 1, frame))
                    deadline = time.monotonic() + quiet
        return got

    def close(self) -> None:
        self.veth.close()


def describe(frame_hex: str) -> str:
    """One line for a frame (for reading a difference)."""
    frame = bytes.fromhex(frame_hex)
    if len(frame) < _PAYLOAD + 24 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return f"frame {frame_hex[:80]}"
    pkt = NetAgg(frame[_PAYLOAD:])
    kind = MsgType(pkt.type).name if pkt.type in iter(MsgType) else pkt.type
    return (
        f"{socket.inet_ntoa(frame[26:30])}->{socket.inet_ntoa(frame[30:34])} eth {frame[:14].hex()} "
        f"ip {frame[14:34].hex()} udp {frame[34:42].hex()} | {kind} w={pkt.worker} "
        f"slot={pkt.slot}/{pkt.set} seq={pkt.seq} n={pkt.count} exp={pkt.exp} bitmap={pkt.bitmap:#x} "
        f"flags={int(pkt.flags)} epoch={pkt.epoch} values={list(pkt.values)[:8]}"
    )


def compare(a: Outcome, b: Outcome, names: tuple[str, str] = ("python", "bmv2")) -> list[str]:
    """The differences between two outcomes of one case, as lines for a person."""
    diffs = []
    if len(a[0]) != len(b[0]):
        diffs.append(f"{len(a[0])} datagrams against {len(b[0])}")
    for i, (x, y) in enumerate(zip(a[0], b[0], strict=False)):
        if x != y:
            diffs.append(f"datagram {i}:")
            diffs += [f"  {names[0]} port {p} {describe(h)}" for p, h in x] or [f"  {names[0]}: nothing"]
            diffs += [f"  {names[1]} port {p} {describe(h)}" for p, h in y] or [f"  {names[1]}: nothing"]
    for part in ("counters", "drops"):
        if a[1].get(part) != b[1].get(part):
            diffs.append(f"{part}: {names[0]} {a[1].get(part)} {names[1]} {b[1].get(part)}")
    return diffs
