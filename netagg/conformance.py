"""Conformance: the same packet sequences through the Python switch and through BMv2, outputs compared.

Each :class:`Case` is a list of datagrams crafted with the scapy layer (:class:`netagg.scapy_layer.NetAgg`),
each sent from one of three hosts: two workers of one job and an outsider. A target runs a case from a
fresh switch and returns, per datagram, what the switch sent (destination and netagg bytes, sorted) and
at the end its drop counters. :class:`PythonTarget` feeds :class:`switch.core.Dataplane` directly;
:class:`Bmv2Target` sends real Ethernet frames into ``simple_switch`` over veth pairs and captures what
comes out. docs/protocol.md is the reference: a difference is a bug in one of them, or in the page.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netagg.protocol import DEFAULT_PORT, MsgType
from netagg.scapy_layer import NetAgg

__all__ = ["CASES", "Bmv2Target", "Case", "Outcome", "PythonTarget", "Send"]

JOB = 5
WORKERS = 2
SLOT_BASE = 8
SLOTS = 4
ELEMENTS = 64  # the P4 program's compiled N: full packets take its one-field path
SWITCH_IP = "10.99.0.254"
SWITCH_MAC = "02:00:0a:63:00:fe"
#: name -> (IP, UDP port, MAC): the job's two workers and a host outside the job.
HOSTS = {
    "w0": ("10.99.0.1", 40000, "02:00:0a:63:00:01"),
    "w1": ("10.99.0.2", 40001, "02:00:0a:63:00:02"),
    "x": ("10.99.0.3", 40002, "02:00:0a:63:00:03"),
    "p": ("10.99.0.4", 47000, "02:00:0a:63:00:04"),  # the parent switch, in the tree cases
}
PARENT_WORKER = 1


@dataclass(frozen=True)
class Send:
    """One datagram (the UDP payload) from a host; or a function of the incarnation this switch last
    sent its parent in a JOIN (for the parent's JOIN_ACK in the tree cases)."""

    host: str
    payload: bytes | Callable[[int], bytes]

    def data(self, incarnation: int) -> bytes:
        return self.payload(incarnation) if callable(self.payload) else self.payload


@dataclass(frozen=True)
class Case:
    name: str
    sends: tuple[Send, ...]
    tree: bool = False
    """The switch is a leaf of a tree: its parent is host "p" (docs/protocol.md, "Aggregation trees")."""


#: Per datagram: sorted (destination "IP:PORT", netagg bytes as hex); then the drop counters.
Outcome = tuple[list[list[tuple[str, str]]], dict[str, int]]


def _n(**kw: Any) -> bytes:
    kw.setdefault("job", JOB)
    return bytes(NetAgg(**kw))


def _join(worker: int, incarnation: int, **kw: Any) -> bytes:
    return _n(type="JOIN", worker=worker, seq=incarnation, **kw)


def _contrib(worker: int, slot: int, seq: int, values: list[int], epoch: int = 1, **kw: Any) -> bytes:
    return _n(
        type="CONTRIB", worker=worker, slot=slot, set=seq & 1, seq=seq, epoch=epoch, values=values, **kw
    )


def _joined() -> list[Send]:
    return [Send("w0", _join(0, 111)), Send("w1", _join(1, 222))]


def _cases() -> list[Case]:
    a = [1, -2, 3, 2**31 - 1, -(2**31), 0, 7, 8]
    b = [10, 20, -30, 1, -1, 5, 6, 7]
    # every lane's carry cases: overflow both ways, -1 + 1, sign flips
    big_a = [(i * 2654435761) % 2**32 - 2**31 for i in range(ELEMENTS)]
    big_a[:4] = [2**31 - 1, -(2**31), -1, 0x40000000]
    big_b = [(i * 40503 + 7) % 2**32 - 2**31 for i in range(ELEMENTS)]
    big_b[:4] = [1, -1, 1, 0x40000000]
    cases = [
        Case(
            "join round, repeats, new incarnation",
            (
                Send("w0", _join(0, 111)),
                Send("w0", _join(0, 111)),  # repeat before the round completes: PENDING
                Send("w1", _join(1, 222)),  # completes: JOIN_ACK to both
                Send("w0", _join(0, 111)),  # repeat after: JOIN_ACK to w0
                Send("w1", _join(1, 333)),  # a new incarnation starts a new round
                Send("w0", _join(0, 111)),  # w0's old incarnation no longer counts: it joins the new round
            ),
        ),
        Case(
            "first contributions, completion, repeats",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, exp=1030)),
                Send("w0", _contrib(0, 8, 0, a, exp=1030, flags="RETX")),  # repeat before completion: PENDING
                Send("w1", _contrib(1, 8, 0, b, exp=1040)),  # completes: RESULT to both
                Send("w1", _contrib(1, 8, 0, b, exp=1040, flags="RETX")),  # repeat after: RESULT unicast
            ),
        ),
        Case(
            "set flips, reuse and late packets",
            (
                *_joined(),
                Send("w0", _contrib(0, 9, 0, a)),
                Send("w1", _contrib(1, 9, 0, b)),
                Send("w0", _contrib(0, 9, 1, b)),  # set 1
                Send("w1", _contrib(1, 9, 1, a)),
                Send("w0", _contrib(0, 9, 2, a[:3])),  # set 0 again (use 2), shorter
                Send("w1", _contrib(1, 9, 0, b)),  # late duplicate of use 0: stale_seq
                Send("w1", _contrib(1, 9, 2, b[:2])),  # same use, other count: count_mismatch
                Send("w1", _contrib(1, 9, 2, b[:3])),
                Send("w0", _contrib(0, 9, 1, b)),  # use 1 is still kept: unicast result
            ),
        ),
        Case(
            "bootstrap uses and exponent maxima",
            (
                *_joined(),
                Send("w0", _contrib(0, 10, 0, [], exp=1100)),
                Send("w1", _contrib(1, 10, 0, [], exp=0)),
                Send("w0", _contrib(0, 11, 0, [], exp=0xFFFF)),
                Send("w1", _contrib(1, 11, 0, [], exp=900)),
            ),
        ),
        Case(
            "foreign jobs, workers, slots and sources",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, job=99)),  # unknown_job
                Send("w0", _contrib(5, 8, 0, a)),  # bad_worker
                Send("w0", _contrib(0, 2, 0, a)),  # bad_slot (below the job's range)
                Send("w0", _contrib(0, 12, 0, a)),  # bad_slot (above)
                Send("x", _contrib(0, 8, 0, a)),  # wrong_source
                Send("x", _join(0, 999)),  # a JOIN from outside: wrong_source
                Send("w0", _contrib(0, 8, 0, a)),
                Send("w1", _contrib(1, 8, 0, b)),  # the sum is untouched by all of the above
            ),
        ),
        Case(
            "malformed headers",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, version=2)),  # bad_version
                Send("w0", _contrib(0, 8, 0, a, reserved=1)),  # bad_reserved
                Send("w0", _contrib(0, 8, 0, a, count=7)),  # bad_length
                Send("w0", _contrib(0, 8, 0, a)[:-4]),  # bad_length (short payload)
                Send("w0", _contrib(0, 8, 0, a)[:20]),  # truncated
                Send("w0", _n(type="RESULT", worker=0, slot=8, epoch=1, values=a)),  # bad_type
                Send("w0", _n(type=9, worker=0)),  # bad_type
                Send("w0", _contrib(0, 8, 0, [0] * (ELEMENTS + 1))),  # count > the job's elements: bad_length
                Send("w0", _n(type="CONTRIB", worker=0, slot=8, set=1, seq=0, epoch=1, values=a)),  # bad_set
                Send("w0", _contrib(0, 8, 0, a, epoch=3)),  # stale_epoch
                Send("w0", _join(0, 0)),  # bad_incarnation
                Send("w0", _contrib(0, 8, 0, a)),
                Send("w1", _contrib(1, 8, 0, b)),
            ),
        ),
        Case(
            "contributions before the job is joined",
            (
                Send("w0", _contrib(0, 8, 0, a, epoch=0)),  # not_joined
                Send("w0", _join(0, 5)),
                Send("w0", _contrib(0, 8, 0, a, epoch=0)),  # still not joined
            ),
        ),
    ]
    p = "p"

    def parent_ack(epoch: int = 4) -> Callable[[int], bytes]:
        return lambda inc: _n(type="JOIN_ACK", worker=PARENT_WORKER, epoch=epoch, seq=inc, bitmap=3)

    def parent_result(slot: int, seq: int, values: list[int], epoch: int = 4, exp: int = 1050) -> bytes:
        return _n(
            type="RESULT",
            worker=0xFFFF,
            slot=slot,
            set=seq & 1,
            seq=seq,
            epoch=epoch,
            exp=exp,
            values=values,
            bitmap=3,
        )

    total = [(x + y + 1000 + 2**31) % 2**32 - 2**31 for x, y in zip(a, b, strict=True)]  # int32
    cases += [
        Case(
            "tree: partial up, result down, repeats",
            (
                *_joined(),  # the round completes: JOIN_ACKs down and this switch's JOIN up
                Send("w0", _contrib(0, 8, 0, a, exp=1030)),
                Send(
                    "w1", _contrib(1, 8, 0, b, exp=1040)
                ),  # complete before the parent's ack: the JOIN again
                Send(p, parent_ack()),
                Send("w1", _contrib(1, 8, 0, b, exp=1040, flags="RETX")),  # now the partial goes up (RETX)
                Send(p, parent_result(8, 0, total)),  # down to both workers with this switch's epoch
                Send(p, parent_result(8, 0, total)),  # a duplicate: nothing
                Send("w0", _contrib(0, 8, 0, a, exp=1030)),  # a repeat: the stored result, unicast
                Send("w0", _contrib(0, 9, 0, a)),
                Send("w1", _contrib(1, 9, 0, b)),  # complete: the partial goes up
                Send(p, parent_result(9, 1, total)),  # wrong use: stale
                Send(p, parent_result(9, 0, total, epoch=5)),  # wrong epoch: stale
                Send(p, _n(type="PENDING", worker=PARENT_WORKER, slot=9, epoch=4, bitmap=1)),  # counted only
                Send("x", parent_result(9, 0, total)),  # a RESULT from anyone else: bad_type
                Send(p, parent_result(9, 0, total, exp=0xFFFF)),
            ),
            tree=True,
        ),
    ]
    return cases


CASES: list[Case] = _cases()


def _outputs_key(outs: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """Sorted (destination, hex); the random incarnation of a JOIN to the parent reads as 0."""
    key = []
    for dest, data in outs:
        shown = data[:12] + b"\0\0\0\0" + data[16:] if len(data) >= 16 and data[1] == MsgType.JOIN else data
        key.append((dest, shown.hex()))
    return sorted(key)


def _incarnation(outs: list[tuple[str, bytes]], last: int) -> int:
    """The incarnation of this switch's latest JOIN to its parent among ``outs`` (else ``last``)."""
    for _, data in outs:
        if len(data) >= 16 and data[1] == MsgType.JOIN:
            last = int.from_bytes(data[12:16], "big")
    return last


class PythonTarget:
    """The Python switch's dataplane, fed directly (no sockets)."""

    def run(self, case: Case) -> Outcome:
        from switch.core import Dataplane, JobConfig

        cfg = JobConfig(
            job_id=JOB,
            workers=WORKERS,
            slots=SLOTS,
            elements=ELEMENTS,
            slot_base=SLOT_BASE,
            addresses=tuple((HOSTS[h][0], HOSTS[h][1]) for h in ("w0", "w1")),
            total_workers=4 if case.tree else None,
            parent=(HOSTS["p"][0], HOSTS["p"][1]) if case.tree else None,
            parent_worker=PARENT_WORKER,
        )
        dp = Dataplane([cfg])
        per_send = []
        incarnation = 0
        for send in case.sends:
            ip, port, _ = HOSTS[send.host]
            outs = []
            for data, dests in dp.handle(send.data(incarnation), (ip, port)):
                payload = bytes(data.data if hasattr(data, "size") else data)  # type: ignore[union-attr]
                outs += [(f"{d[0]}:{d[1]}", payload) for d in dests]
            incarnation = _incarnation(outs, incarnation)
            per_send.append(_outputs_key(outs))
        drops = {k: int(v) for k, v in dp.drops.items() if v}
        return per_send, drops


def _frame(host: str, payload: bytes) -> bytes:
    from switch.ethernet import mac_bytes, udp_frame

    ip, port, mac = HOSTS[host]
    return udp_frame(mac_bytes(mac), ip, port, mac_bytes(SWITCH_MAC), SWITCH_IP, DEFAULT_PORT, payload)


class Bmv2Target:
    """simple_switch with netagg's program; each host is a veth pair whose outer end this process
    drives with raw frames (:class:`netagg.testing.VethPorts`; needs root). Interfaces are named
    ``<tag>c<i>``/``<tag>s<i>`` and deleted by :meth:`close`."""

    def __init__(self, json_path: Path, *, tag: str | None = None) -> None:
        from netagg.testing import VethPorts
        from switch.bmv2 import Bmv2Agent, Bmv2Process, HostPort

        self.veth = VethPorts(tag or f"nc{os.getpid() % 10000}", len(HOSTS))
        self._make = lambda: Bmv2Process(json_path, self.veth.ports())
        self._agent_cls = Bmv2Agent
        self._hosts = [HostPort(ip, mac, i + 1) for i, (ip, _, mac) in enumerate(HOSTS.values())]
        self.socks = dict(zip(HOSTS, self.veth.socks, strict=True))

    def run(self, case: Case, quiet: float = 0.15, first_wait: float = 0.4) -> Outcome:
        """A fresh simple_switch per case (no state carries over), then each datagram in turn."""
        from netagg.v1 import control_pb2 as pb

        switch = self._make()
        try:
            agent = self._agent_cls(switch, SWITCH_IP, SWITCH_MAC, self._hosts)
            addresses = [f"{HOSTS[h][0]}:{HOSTS[h][1]}" for h in ("w0", "w1")]
            ctx = _Context()
            agent.InstallJob(
                pb.InstallJobRequest(
                    wire_job_id=JOB,
                    workers=WORKERS,
                    slots=SLOTS,
                    elements_per_packet=ELEMENTS,
                    slot_base=SLOT_BASE,
                    worker_addresses=addresses,
                    total_workers=4 if case.tree else 0,
                    parent_address=f"{HOSTS['p'][0]}:{HOSTS['p'][1]}" if case.tree else "",
                    parent_worker_id=PARENT_WORKER,
                ),
                ctx,
            )
            self._drain()
            per_send = []
            incarnation = 0
            for send in case.sends:
                self.socks[send.host].send(_frame(send.host, send.data(incarnation)))
                outs = self._collect(quiet, first_wait)
                incarnation = _incarnation(outs, incarnation)
                per_send.append(_outputs_key(outs))
            counters = agent.GetCounters(pb.GetCountersRequest(), ctx)
            drops = {k: int(v) for k, v in counters.drops.items() if v}
            return per_send, drops
        finally:
            switch.stop()

    def _drain(self) -> None:
        self._collect(0.05, 0.05)

    def _collect(self, quiet: float, first_wait: float) -> list[tuple[str, bytes]]:
        """netagg datagrams from the switch until none came for ``quiet`` s (``first_wait``: the first)."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + first_wait
        poller = select.poll()
        by_fd = {s.fileno(): i for i, s in enumerate(self.veth.socks)}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                for frame in self.veth.received(by_fd[fd]):
                    out = _parse(frame)
                    if out is not None:
                        got.append(out)
                        deadline = time.monotonic() + quiet
        return got

    def close(self) -> None:
        self.veth.close()


class _Context:
    """Enough of grpc.ServicerContext to call the agent's methods in process."""

    def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


def _parse(frame: bytes) -> tuple[str, bytes] | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    src = socket.inet_ntoa(frame[26:30])
    dst = socket.inet_ntoa(frame[30:34])
    sport, dport, length, _ = struct.unpack_from("!HHHH", frame, 14 + ihl)
    if src != SWITCH_IP or sport != DEFAULT_PORT:
        return None
    payload = frame[14 + ihl + 8 : 14 + ihl + length]
    return f"{dst}:{dport}", payload


def describe(payload_hex: str) -> str:
    """One line for a netagg datagram (for reading a difference)."""
    pkt = NetAgg(bytes.fromhex(payload_hex))
    return (
        f"{MsgType(pkt.type).name if pkt.type in iter(MsgType) else pkt.type} w={pkt.worker} "
        f"slot={pkt.slot}/{pkt.set} seq={pkt.seq} n={pkt.count} exp={pkt.exp} bitmap={pkt.bitmap:#x} "
        f"flags={int(pkt.flags)} epoch={pkt.epoch} values={list(pkt.values)[:8]}"
    )


def compare(a: Outcome, b: Outcome) -> list[str]:
    """The differences between two outcomes of one case, as lines for a person."""
    diffs = []
    for i, (x, y) in enumerate(zip(a[0], b[0], strict=True)):
        if x != y:
            diffs.append(f"datagram {i}:")
            diffs += [f"  python {d} {describe(h)}" for d, h in x] or ["  python: nothing"]
            diffs += [f"  bmv2   {d} {describe(h)}" for d, h in y] or ["  bmv2: nothing"]
    if a[1] != b[1]:
        diffs.append(f"drops: python {a[1]} bmv2 {b[1]}")
    return diffs


def run_all(targets: Sequence[Callable[[Case], Outcome]]) -> dict[str, list[Outcome]]:
    """Every case through every target."""
    return {c.name: [t(c) for t in targets] for c in CASES}
