"""A worker's standing in its job between calls: what the switch's JOIN_ACK said, each slot's next use
number, the retransmission timer's estimate and the counters. No sockets here.

A :class:`Session` is made from a JOIN_ACK (:mod:`host_agent.join`) and handed to every engine
(:mod:`host_agent.engine`) the worker runs; the engine advances the slots' use numbers when its call
completes, so the next call continues where this one stopped (docs/protocol.md, "Worker rules").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from netagg.protocol import PAYLOAD_DTYPE, Flag, MsgType, pack_header, scale_bits, slot_field

__all__ = ["JobParams", "Rto", "Session", "Stats"]


@dataclass(frozen=True, slots=True)
class JobParams:
    """This worker's job at its switch, as the JOIN_ACK gave it (docs/protocol.md, "JOIN_ACK")."""

    job: int
    """The job id at the switch."""
    worker_id: int
    """The id the switch knows this worker by (its bit in the contributor bitmap)."""
    epoch: int
    """The job's round at the switch; every CONTRIB carries it."""
    slot_base: int
    """The job's first slot at the switch."""
    slots: int
    """Slots of the job (the window): at most this many packets in flight."""
    elements: int
    """int32 elements per packet."""
    fanin: int
    """Workers at this worker's switch (the bitmap's width)."""
    total_workers: int
    """Workers of the whole job (more than ``fanin`` in a tree): they set the quantizer's headroom."""
    group: int = 0
    """The IPv4 multicast group results are sent to (0: unicast)."""
    group_port: int = 0
    round: int = 0
    """The JOIN round's id (what a rejoin continues: docs/protocol.md, "Recovery")."""
    resume: bool = False
    """The round continues the members' previous one (their use numbers go on)."""

    def same_job(self, other: JobParams) -> bool:
        """Whether ``other`` (a later JOIN_ACK) describes the same job, so that a call can go on."""
        keep = ("job", "worker_id", "slot_base", "slots", "elements", "fanin", "total_workers")
        return all(getattr(self, k) == getattr(other, k) for k in keep)

    @property
    def bits(self) -> int:
        """Magnitude bits per quantized value (``scale_bits(total_workers)``)."""
        return scale_bits(self.total_workers)


class Stats:
    """A worker's counters (packets and bytes each way, retransmissions, dropped stale packets)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "fast_retransmissions",
        "offers",
        "received",
        "rejoins",
        "retransmissions",
        "sent",
        "stale",
    )

    def __init__(self) -> None:
        self.sent = self.received = self.retransmissions = self.stale = 0
        self.rejoins = self.offers = self.fast_retransmissions = 0
        self.bytes_sent = self.bytes_received = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass
class Rto:
    """The retransmission timeout: smoothed RTT + 4 x its deviation, within [min_rto, max_rto]
    (RFC 6298's estimator; samples only from packets sent once, as Karn's rule says)."""

    min_rto: float
    max_rto: float
    srtt: float | None = None
    rttvar: float = 0.0

    @property
    def value(self) -> float:
        if self.srtt is None:  # no sample yet: start high, as TCP does, so a slow start is no storm
            return max(self.min_rto, min(self.max_rto, 0.2))
        return min(self.max_rto, max(self.min_rto, self.srtt + 4 * self.rttvar))

    @property
    def reorder_window(self) -> float:
        """How much later than a use another use may have been sent and still complete first without
        the first being taken as lost (fast retransmission): a quarter of the smoothed RTT, at least
        1 ms (RACK's rule, RFC 8985)."""
        return max(0.001, (self.srtt if self.srtt is not None else 0.2) / 4)

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt


@dataclass
class Session:
    """One join's state, carried from call to call."""

    params: JobParams
    rto: Rto
    stats: Stats = field(default_factory=Stats)
    key: int = 0
    """The job's key, which a rejoin's JOIN carries."""
    switch: str = ""
    """The switch's address, for messages."""
    seq: np.ndarray = field(init=False)
    """The next use number of each slot in this epoch."""
    payload: np.ndarray = field(init=False)
    """Scratch for the payload each slot has in flight (reused by every call)."""
    last_vals: np.ndarray = field(init=False)
    """The last call's last chunks (their values' 32 bits), kept when it ends: the results this worker
    offers after a resume (docs/protocol.md, "Recovery"), since the user may change the output."""
    last_seq: np.ndarray = field(init=False)
    """The use number of each slot's kept result (-1: none)."""
    last_count: np.ndarray = field(init=False)
    last_offset: np.ndarray = field(init=False)
    """Where each slot's kept result starts in ``last_vals``."""
    last_op: np.ndarray = field(init=False)
    """The op field of each slot's kept result's use."""
    last_contribution: list[bytes | None] = field(init=False)
    """For a slot whose last use was another rank's reduce-scatter chunk: this worker's contribution
    to it, sent again after a resume instead of an offer (docs/protocol.md, "Recovery")."""
    reoffer: np.ndarray | None = None
    """Since a resumed round: each slot's first use after it. Offers go again with retransmissions (an
    offer may be lost) until this worker holds the result of that use in every slot: then every
    worker contributed to it, so every worker holds every result from before the resume."""

    def __post_init__(self) -> None:
        p = self.params
        self.last_vals = np.zeros(p.slots * p.elements, dtype=np.uint32)
        self.last_seq = np.full(p.slots, -1, dtype=np.int64)
        self.last_count = np.zeros(p.slots, dtype=np.int64)
        self.last_offset = np.zeros(p.slots, dtype=np.int64)
        self.last_op = np.zeros(p.slots, dtype=np.int64)
        self.last_contribution = [None] * p.slots
        self.seq = np.zeros(p.slots, dtype=np.int64)
        self.payload = np.zeros((p.slots, p.elements), dtype=PAYLOAD_DTYPE)

    def last_offer(self, j: int) -> bytes | None:
        """The OFFER of slot ``j``'s kept result (epoch 0: set when sent), or None."""
        seq = int(self.last_seq[j])
        if seq < 0:
            return self.last_contribution[j]
        p, count = self.params, int(self.last_count[j])
        hdr = pack_header(
            MsgType.CONTRIB,
            flags=Flag.OFFER | Flag.FINAL,
            job=p.job,
            worker=p.worker_id,
            slot=slot_field(p.slot_base + j, seq & 1),
            count=count,
            seq=seq,
            op=int(self.last_op[j]),
        )  # exp 0: a call's last use proposes nothing for a next one
        at = int(self.last_offset[j])
        return hdr + self.last_vals[at : at + count].astype(">u4").tobytes()
