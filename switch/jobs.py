"""What the dataplane keeps per job: its configuration (:class:`JobConfig`, what the control plane
installs) and its state (:class:`JobState`: membership, the slots' sets and their RESULT datagrams), plus
the drop reasons and the shapes of what the dataplane returns. No sockets, no packet logic here: the
rules are :class:`switch.core.Dataplane`'s."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from netagg.protocol import (
    HEADER_SIZE,
    MAX_ELEMENTS,
    MAX_SLOTS,
    MAX_WINDOW_ELEMENTS,
    MAX_WORKERS,
    PAYLOAD_DTYPE,
    join_ack_packet,
    pending_packet,
)

__all__ = [
    "DROP_REASONS",
    "SEQ_NONE",
    "Address",
    "JobConfig",
    "JobState",
    "Output",
    "Segments",
    "check_disjoint",
]

#: Where a datagram came from or goes: anything hashable that the backend understands ((host, port) for UDP).
Address = Any
#: What to send: the bytes (a view that is valid until the next call) and the addresses to send them to.
Output = tuple["memoryview | bytes | bytearray | Segments", list[Address]]


class Segments(NamedTuple):
    """Datagrams of ``size`` bytes back to back in ``data`` (the last may be shorter): one GSO send."""

    data: memoryview | bytes
    size: int

    def __len__(self) -> int:
        return len(self.data)

    @property
    def datagrams(self) -> int:
        return -(-len(self.data) // self.size)


#: Every reason a datagram is dropped; the counters have one entry each.
DROP_REASONS = (
    "truncated",  # shorter than the header
    "bad_version",  # version field is not ours
    "bad_type",  # unknown message type, or one a switch never receives (RESULT, ...)
    "bad_op",  # an unknown collective or reduction, or a reduction the collective does not take
    "bad_length",  # datagram length disagrees with count, or count exceeds the job's elements
    "unknown_job",  # no job with that id is installed
    "bad_worker",  # worker id outside the job
    "bad_slot",  # slot index outside the job's range
    "bad_set",  # set bit disagrees with the low bit of seq
    "bad_incarnation",  # JOIN with incarnation 0
    "bad_key",  # a JOIN without the job's key
    "not_joined",  # a contribution before every worker has joined
    "stale_epoch",  # a contribution from an earlier epoch of the job
    "wrong_source",  # a contribution from an address other than the one the worker joined from
    "stale_seq",  # a contribution to a use of the slot that has been superseded
    "count_mismatch",  # count differs from the other contributions to the same use
    "op_mismatch",  # op (collective, reduction, root) differs from the other packets of the same use
)

SEQ_NONE = -1


@dataclass(frozen=True)
class JobConfig:
    """One job's share of the switch."""

    job_id: int
    """Job id carried in every packet (0-65535)."""
    workers: int
    """Children whose contributions this switch adds for the job (1-32)."""
    slots: int
    """Slots the job owns; each worker keeps at most one packet per slot in flight (its window)."""
    elements: int
    """Elements per packet (N): 64 is SwitchML's 256-byte payload; up to MAX_ELEMENTS on loopback."""
    slot_base: int = 0
    """First switch slot index of the job: the job owns ``[slot_base, slot_base + slots)``."""
    total_workers: int | None = None
    """Workers whose values end up in the sum (for the quantization scale); default ``workers``."""
    addresses: tuple[Address, ...] | None = None
    """Fixed worker addresses (index = worker id); None learns them from each worker's JOIN."""
    multicast: tuple[str, int] | None = None
    """IPv4 group and port to send each result to once, instead of once per worker (workers learn it
    from JOIN_ACK and join the group). A P4 switch replicates a result with a multicast group; over
    UDP, IP multicast does the same, and on loopback it saves the switch W-1 copies per result."""
    parent: Address | None = None
    """In an aggregation tree, the parent switch's address: when a use is complete here, its partial
    sum goes up to the parent as one contribution, and the parent's RESULT comes down to the workers
    (docs/protocol.md, "Aggregation trees"). None for a root or a single switch."""
    parent_worker: int = 0
    """This switch's worker id in the job at the parent."""
    key: int = 0
    """The job's 64-bit key (docs/protocol.md, "Job keys"): a JOIN must carry it. 0: no key."""
    parent_key: int = 0
    """The key this switch's JOINs at its parent carry (the job's key there)."""

    def __post_init__(self) -> None:
        if not 0 <= self.job_id <= 0xFFFF:
            raise ValueError(f"job_id must be 0-65535, got {self.job_id}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1-{MAX_WORKERS}, got {self.workers}")
        if not 1 <= self.elements <= MAX_ELEMENTS:
            raise ValueError(f"elements must be 1-{MAX_ELEMENTS}, got {self.elements}")
        if self.slots < 1 or self.slot_base < 0 or self.slot_base + self.slots > MAX_SLOTS:
            raise ValueError(
                f"slots [{self.slot_base}, {self.slot_base + self.slots}) must lie in [0, {MAX_SLOTS})"
            )
        if self.slots * self.elements > MAX_WINDOW_ELEMENTS:
            raise ValueError(
                f"slots x elements = {self.slots * self.elements} exceeds {MAX_WINDOW_ELEMENTS} "
                "(a 64 MiB window per job); use fewer slots"
            )
        if not 0 <= self.key < 1 << 64 or not 0 <= self.parent_key < 1 << 64:
            raise ValueError("a job key is 64 bits")
        if not 0 <= self.parent_worker < MAX_WORKERS:
            raise ValueError(f"parent_worker must be 0-{MAX_WORKERS - 1}, got {self.parent_worker}")
        total = self.total_workers if self.total_workers is not None else self.workers
        if total < self.workers:
            raise ValueError(f"total_workers ({total}) must be >= workers ({self.workers})")
        if self.addresses is not None and len(self.addresses) != self.workers:
            raise ValueError(f"{len(self.addresses)} addresses for {self.workers} workers")
        if self.multicast is not None:
            group, port = self.multicast
            first = int(group.split(".")[0]) if group.count(".") == 3 and group.split(".")[0].isdigit() else 0
            if not 224 <= first <= 239 or not 0 < port < 65536:
                raise ValueError(
                    f"multicast must be an IPv4 group (224-239.x.x.x) and port, got {self.multicast}"
                )


def check_disjoint(cfg: JobConfig, others: Iterable[JobConfig]) -> None:
    """ValueError if ``cfg``'s slot range overlaps one of ``others``' (every switch keeps jobs disjoint)."""
    lo, hi = cfg.slot_base, cfg.slot_base + cfg.slots
    for other in others:
        olo, ohi = other.slot_base, other.slot_base + other.slots
        if lo < ohi and olo < hi:
            raise ValueError(f"slots [{lo}, {hi}) of job {cfg.job_id} overlap job {other.job_id}'s")


@dataclass
class JobState:
    """Per-job state: membership plus the slot arrays (index = slot - slot_base, set)."""

    cfg: JobConfig
    addrs: list[Address | None]
    incarnation: list[int]
    join_time: list[float]
    joined: bool = False
    epoch: int = 0
    full: int = 0
    total: int = 0  # workers of the whole job (the ranks a reduce-scatter chunk may belong to)
    parent_incarnation: int = 0  # this switch's incarnation at its parent (0: not asked to join)
    parent_epoch: int | None = None  # the job's epoch at the parent, once it acknowledged the JOIN
    parent_round: int = 0  # the round of the parent's last JOIN_ACK (what a rejoin there continues)
    parent_prev: int = 0  # the prev_round this switch's JOINs at its parent carry
    round: int = 0  # the last complete round's id (XOR of the members' incarnations)
    resume: bool = False  # whether that round continues the members' previous one
    tokens: float = 0.0  # the refusal bucket (docs/protocol.md, "Refusals")
    token_time: float = 0.0
    counters: Counter[str] = field(default_factory=Counter)  # per job (Dataplane.job_stats)
    drops: Counter[str] = field(default_factory=Counter)
    prev_round: list[int] = field(init=False)  # what each member's JOIN said it continues
    prev_epoch: list[int] = field(init=False)  # and the epoch it had there (the JOIN's epoch field)
    repeated: list[bool] = field(init=False)  # the member has repeated its JOIN (it is alive)
    # Per use-state of each (slot, set), flattened to index 2 * slot + set: plain lists, because the
    # packet path reads and writes single values (numpy scalars cost ~10x more there).
    seq: list[int] = field(init=False)
    bitmap: list[int] = field(init=False)
    nelem: list[int] = field(init=False)
    expmax: list[int] = field(init=False)
    ready: list[bool] = field(init=False)  # the set's RESULT is known (complete, or came from the parent)
    op: list[int] = field(init=False)  # the use's op field (collective, reduction, root)
    data: list[bool] = field(init=False)  # some packet of the use carried a payload (not EMPTY)
    out_all: np.ndarray = field(init=False)
    out_view: list[memoryview] = field(init=False)
    out_payload_all: np.ndarray = field(init=False)
    result_dests: list[Address] = field(init=False)

    def __post_init__(self) -> None:
        c = self.cfg
        self.full = (1 << c.workers) - 1
        self.total = c.total_workers if c.total_workers is not None else c.workers
        self.prev_round = [0] * c.workers
        self.prev_epoch = [0] * c.workers
        self.repeated = [False] * c.workers
        pairs = 2 * c.slots
        self.result_dests = []
        self.reset_slots()
        # One datagram per slot and set (header + payload in network order): its payload is the
        # accumulator while a use is open and, once complete, the RESULT sent and kept for repeats.
        # 2-D arrays for the batch path, a memoryview per row for the one-packet path.
        self.out_all = np.zeros((pairs, HEADER_SIZE + 4 * c.elements), dtype=np.uint8)
        self.out_payload_all = self.out_all[:, HEADER_SIZE:].view(PAYLOAD_DTYPE)
        self.out_view = [row.data for row in self.out_all]

    def join_ack(self, worker: int) -> bytes:
        """The JOIN_ACK for ``worker``: this round's epoch and the job's parameters."""
        c = self.cfg
        group, port = (0, 0)
        if c.multicast is not None:
            group, port = int.from_bytes(socket.inet_aton(c.multicast[0]), "big"), c.multicast[1]
        params = {
            "slot_base": c.slot_base,
            "slots": c.slots,
            "elements": c.elements,
            "fanin": c.workers,
            "total_workers": c.total_workers if c.total_workers is not None else c.workers,
            "group": group,
            "group_port": port,
            "round": self.round,
        }
        return join_ack_packet(
            self.epoch, c.job_id, worker, self.incarnation[worker], self.full, params, resume=self.resume
        )

    def pending_join(self, worker: int, incarnation: int) -> bytes:
        """The PENDING that answers a JOIN while the round is incomplete: who has joined."""
        joined = sum(1 << w for w, inc in enumerate(self.incarnation) if inc)
        return pending_packet(self.epoch, self.cfg.job_id, worker, incarnation, joined)

    def reset_slots(self) -> None:
        pairs = 2 * self.cfg.slots
        self.seq = [SEQ_NONE] * pairs
        self.bitmap = [0] * pairs
        self.nelem = [0] * pairs
        self.expmax = [0] * pairs
        self.ready = [False] * pairs
        self.op = [0] * pairs
        self.data = [False] * pairs
