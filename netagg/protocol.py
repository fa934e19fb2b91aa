"""The netagg wire protocol: constants and the fast codec.

``docs/protocol.md`` is the source of truth; this module is its executable form. Every packet is one
UDP datagram: a fixed 24-byte header in network byte order followed by ``count`` int32 elements, also in
network byte order. The scapy layer (:mod:`netagg.scapy_layer`) describes the same bytes declaratively;
the codec here is what the hot paths use (``struct`` for one header, numpy structured views for many).
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_CONTROLLER_PORT",
    "DEFAULT_PORT",
    "EXP_BIAS",
    "EXP_NONE",
    "EXP_NONFINITE",
    "FIELDS",
    "HEADER",
    "HEADER_DTYPE",
    "HEADER_SIZE",
    "JOIN_ACK_PARAMS",
    "MAX_ELEMENTS",
    "MAX_SLOTS",
    "MAX_WINDOW_ELEMENTS",
    "MAX_WORKERS",
    "PAYLOAD_DTYPE",
    "SET_BIT",
    "VERSION",
    "Coll",
    "Field",
    "Flag",
    "ROOT_ALL",
    "ReduceOp",
    "check_op",
    "describe_op",
    "op_field",
    "Header",
    "MsgType",
    "OFFSET",
    "OFF_COUNT",
    "OFF_FLAGS",
    "OFF_SEQ",
    "OFF_WORKER",
    "ProtocolError",
    "Reason",
    "JOIN_WORDS",
    "format_key",
    "parse_join",
    "parse_key",
    "refuse_packet",
    "decode",
    "encode",
    "join_ack_packet",
    "join_packet",
    "pack_header",
    "parse_address",
    "parse_join_ack",
    "pending_packet",
    "record_dtype",
    "scale_bits",
    "slot_field",
    "static_job_slots",
]

#: UDP port the switch listens on unless told otherwise (0xB798; unassigned by IANA).
DEFAULT_PORT = 47000
#: The controller's default gRPC port (not part of the wire protocol; here so the CLI imports no grpc).
DEFAULT_CONTROLLER_PORT = 47100
#: Protocol version carried in every header.
VERSION = 2


@dataclass(frozen=True, slots=True)
class Field:
    """One header field: its name, width in bytes and meaning (docs/protocol.md, "Header")."""

    name: str
    size: int
    doc: str


#: The header, field by field, in wire order (network byte order). This table is the one definition in
#: code: the ``struct`` layout, the numpy dtype and the byte offsets below are derived from it, and
#: tests keep the scapy layer and ``p4/include/headers.p4`` in step with it.
FIELDS: tuple[Field, ...] = (
    Field("version", 1, "protocol version (VERSION)"),
    Field("type", 1, "message type (MsgType)"),
    Field("flags", 1, "Flag bits"),
    Field("epoch", 1, "the job's round at the switch, from its JOIN_ACK"),
    Field("job", 2, "job id at the switch"),
    Field("worker", 2, "the sender's worker id (0xFFFF in a RESULT for all)"),
    Field("slot", 2, "bit 15: the set; bits 0-14: the slot index"),
    Field("count", 2, "int32 elements after the header"),
    Field("seq", 4, "the slot's use number (JOIN: the worker's incarnation)"),
    Field("exp", 2, "block exponent proposal / agreed exponent (EXP_*)"),
    Field("op", 2, "bits 15-12 the collective (Coll), 11-8 the reduction (ReduceOp), 7-0 the root rank"),
    Field("bitmap", 4, "contributors (RESULT, PENDING) or joined workers"),
)
_CODES = {1: "B", 2: "H", 4: "I"}
#: Byte offset of each field in the header.
OFFSET: dict[str, int] = {}
_at = 0
for _f in FIELDS:
    OFFSET[_f.name] = _at
    _at += _f.size
del _at, _f
#: ``struct`` layout of the header (from FIELDS). Positional ``HEADER.pack`` calls, in FIELDS' order,
#: belong only in the hot loops (the worker's and the switch's per-packet paths); everything else uses
#: :func:`pack_header` or the named builders below.
HEADER = struct.Struct("!" + "".join(_CODES[f.size] for f in FIELDS))
HEADER_SIZE = HEADER.size  # 24 bytes
#: The same layout as a numpy structured dtype, for decoding many headers at once.
HEADER_DTYPE = np.dtype([(f.name, "u1" if f.size == 1 else f">u{f.size}") for f in FIELDS])
assert HEADER_DTYPE.itemsize == HEADER_SIZE == sum(f.size for f in FIELDS)
OFF_FLAGS = OFFSET["flags"]
OFF_WORKER = OFFSET["worker"]
OFF_COUNT = OFFSET["count"]
OFF_SEQ = OFFSET["seq"]
#: Payload elements: int32, network byte order.
PAYLOAD_DTYPE = np.dtype(">i4")
#: Largest element count whose datagram fits an IPv4 UDP payload (65,507 bytes).
MAX_ELEMENTS = (65507 - HEADER_SIZE) // 4  # 16370
#: Bit 15 of the slot field selects the set (SwitchML's shadow copy); bits 0-14 are the slot index.
SET_BIT = 0x8000
MAX_SLOTS = SET_BIT  # 32768 slot indices
#: Workers per aggregation node: the contributor bitmap is 32 bits wide.
MAX_WORKERS = 32
#: Most slots x elements per packet one job may have on a switch (a 64 MiB window of int32; a switch
#: keeps two sets of it plus the results, ~256 MiB in the Python switch).
MAX_WINDOW_ELEMENTS = 1 << 24
#: Exponent field encoding (16 bits): 0 = no data / all-zero block, 0xFFFF = a non-finite value,
#: anything else = the float exponent e plus EXP_BIAS (block magnitudes are < 2**e).
EXP_NONE = 0
EXP_NONFINITE = 0xFFFF
EXP_BIAS = 1024


class MsgType(enum.IntEnum):
    """Message types (header byte 1)."""

    JOIN = 1  #: worker -> switch: join the job (seq = the worker's incarnation)
    JOIN_ACK = 2  #: switch -> worker: every worker has joined; epoch, elements, slots, workers
    CONTRIB = 3  #: worker -> switch: one worker's contribution to one use of a slot
    RESULT = 4  #: switch -> worker: the completed sum of one use of a slot
    PENDING = 5  #: switch -> worker: answer to a repeat of an incomplete use; bitmap = who is in
    REFUSE = 6  #: switch -> sender: its JOIN or CONTRIB was dropped for a reason it can act on (exp)


class Flag(enum.IntFlag):
    """Header flags (header byte 2)."""

    NONE = 0
    RETX = 0x01  #: a retransmission by the sender (informational; counted by the switch)
    UNICAST = 0x02  #: a RESULT sent to one worker in answer to its repeat, not to all
    RESUME = 0x04  #: JOIN_ACK: the round continues every member's previous round (docs "Recovery")
    OFFER = 0x08  #: CONTRIB: carries a use's result (held by the sender), not a contribution
    FINAL = 0x10  #: RESULT/OFFER: the payload is the result's final values, copied as they are
    EMPTY = 0x20  #: CONTRIB/RESULT without payload; ``count`` still says the use's (docs "Collectives")


class Reason(enum.IntEnum):
    """Why a switch refused a packet: a REFUSE's ``exp`` field (docs/protocol.md, "Refusals"). The
    names are the switch's drop reasons."""

    not_joined = 1  #: the job's round is not complete: rejoin
    stale_epoch = 2  #: the packet's epoch is not the job's: rejoin
    unknown_job = 3  #: no such job at the switch
    count_mismatch = 4  #: another worker sent this use with another count (REFUSE bitmap = that count)
    wrong_source = 5  #: the job takes this worker's packets from another address
    bad_key = 6  #: the JOIN's key is not the job's
    op_mismatch = 7  #: another worker sent this use with another op field (REFUSE bitmap = the use's)


class Coll(enum.IntEnum):
    """The collective a use belongs to: bits 15-12 of the header's ``op`` field (docs "Collectives")."""

    allreduce = 0
    reduce_scatter = 1
    all_gather = 2
    broadcast = 3
    barrier = 4


class ReduceOp(enum.IntEnum):
    """The reduction the switch applies lane by lane: bits 11-8 of the ``op`` field."""

    sum = 0
    max = 1
    min = 2


#: ``root`` of a reduce-scatter use whose result goes to every worker (what a tree's leaf sends up).
ROOT_ALL = 0xFF


def op_field(coll: int, reduce: int = 0, root: int = 0) -> int:
    """The 16-bit ``op`` field."""
    return (coll << 12) | (reduce << 8) | root


def check_op(op: int) -> bool:
    """Whether an ``op`` field names a known collective and a reduction it allows."""
    coll, reduce = op >> 12, (op >> 8) & 0xF
    if coll > Coll.barrier or reduce > ReduceOp.min:
        return False
    return reduce == 0 or coll <= Coll.reduce_scatter


def describe_op(op: int) -> str:
    """``op`` in words, for error messages: "reduce_scatter(max, root 3)"."""
    coll, reduce, root = op >> 12, (op >> 8) & 0xF, op & 0xFF
    name = Coll(coll).name if coll <= Coll.barrier else f"collective {coll}"
    red = ReduceOp(reduce).name if reduce <= ReduceOp.min else f"reduction {reduce}"
    if coll <= Coll.reduce_scatter:
        return f"{name}({red}" + (f", root {root})" if coll == Coll.reduce_scatter else ")")
    return f"{name}(root {root})" if coll in (Coll.all_gather, Coll.broadcast) else name


class ProtocolError(ValueError):
    """A datagram that does not follow docs/protocol.md."""


@dataclass(frozen=True, slots=True)
class Header:
    """One decoded header. Field meanings are those of docs/protocol.md."""

    type: int
    job: int = 0
    worker: int = 0
    slot: int = 0
    set: int = 0
    count: int = 0
    seq: int = 0
    exp: int = EXP_NONE
    flags: int = 0
    epoch: int = 0
    bitmap: int = 0
    op: int = 0
    version: int = VERSION

    def pack(self) -> bytes:
        """The 24 header bytes."""
        return pack_header(
            self.type,
            flags=self.flags,
            epoch=self.epoch,
            job=self.job,
            worker=self.worker,
            slot=slot_field(self.slot, self.set),
            count=self.count,
            seq=self.seq,
            exp=self.exp,
            bitmap=self.bitmap,
            op=self.op,
            version=self.version,
        )


def slot_field(slot: int, set_: int) -> int:
    """The 16-bit slot field: the slot index with the set in bit 15."""
    return (slot & (SET_BIT - 1)) | (SET_BIT if set_ else 0)


def pack_header(
    type: int,
    *,
    flags: int = 0,
    epoch: int = 0,
    job: int = 0,
    worker: int = 0,
    slot: int = 0,
    count: int = 0,
    seq: int = 0,
    exp: int = EXP_NONE,
    bitmap: int = 0,
    op: int = 0,
    version: int = VERSION,
) -> bytes:
    """One header by field name (``slot`` is the raw 16-bit field: see :func:`slot_field`)."""
    return HEADER.pack(version, type, flags, epoch, job, worker, slot, count, seq, exp, op, bitmap)


# -- the cold-path messages, by name (docs/protocol.md, "Messages") ---------------------------------
#: JOIN's payload words, when it has any (docs/protocol.md, "Message types").
JOIN_WORDS = 3


def join_packet(
    job: int, worker: int, incarnation: int, *, key: int = 0, prev_round: int = 0, prev_epoch: int = 0
) -> bytes:
    """JOIN: ``worker`` of ``job`` asks to join; ``incarnation`` (non-zero) names this attempt, ``key``
    is the job's 64-bit key (0: none), ``prev_round`` and ``prev_epoch`` the round it continues and
    the epoch it had there (0: none)."""
    if not 0 <= key < 1 << 64:
        raise ValueError(f"a job key is 64 bits, got {key:#x}")
    hdr = pack_header(
        MsgType.JOIN, epoch=prev_epoch, job=job, worker=worker, count=JOIN_WORDS, seq=incarnation
    )
    return hdr + struct.pack("!III", key >> 32, key & 0xFFFFFFFF, prev_round)


def parse_join(datagram: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(key, prev_round) of a JOIN (0, 0 for one without payload), or None if its length is wrong."""
    n = len(datagram)
    if n == HEADER_SIZE:
        return 0, 0
    if n != HEADER_SIZE + 4 * JOIN_WORDS:
        return None
    hi, lo, prev = struct.unpack_from("!III", datagram, HEADER_SIZE)
    return hi << 32 | lo, prev


def refuse_packet(
    reason: int, epoch: int, job: int, worker: int, slot: int, seq: int, detail: int = 0
) -> bytes:
    """REFUSE: the switch dropped a packet of ``job``/``worker`` (its raw ``slot`` field and ``seq``
    copied) for ``reason`` (:class:`Reason`); ``epoch`` is the job's at the switch, ``detail`` the
    count the use has for ``count_mismatch``, the refused packet's epoch for ``not_joined`` and
    ``stale_epoch``."""
    return pack_header(
        MsgType.REFUSE, epoch=epoch, job=job, worker=worker, slot=slot, seq=seq, exp=reason, bitmap=detail
    )


def parse_key(text: str) -> int:
    """A job key from its text form (16 hex digits, ``0x`` allowed; docs/protocol.md "Job keys")."""
    t = text.strip().lower().removeprefix("0x")
    if not t or len(t) > 16 or any(ch not in "0123456789abcdef" for ch in t):
        raise ValueError("a job key is up to 16 hex digits (64 bits)")
    return int(t, 16)


def format_key(key: int) -> str:
    """A job key's text form: 16 hex digits."""
    return f"{key:016x}"


def pending_packet(epoch: int, job: int, worker: int, seq: int, bitmap: int, *, slot: int = 0) -> bytes:
    """PENDING: the answer to a repeat whose round (a JOIN's: slot 0, seq = incarnation) or use (slot
    field and seq of the use) is not complete; ``bitmap`` says who is in."""
    return pack_header(
        MsgType.PENDING, epoch=epoch, job=job, worker=worker, slot=slot, seq=seq, bitmap=bitmap
    )


#: JOIN_ACK's payload words, in order (docs/protocol.md, "JOIN_ACK").
JOIN_ACK_PARAMS = (
    "slot_base",
    "slots",
    "elements",
    "fanin",
    "total_workers",
    "group",
    "group_port",
    "round",
)


def join_ack_packet(
    epoch: int,
    job: int,
    worker: int,
    incarnation: int,
    bitmap: int,
    params: dict[str, int],
    *,
    resume: bool = False,
) -> bytes:
    """JOIN_ACK: every worker has joined; the payload carries JOIN_ACK_PARAMS as 32-bit words, the
    flags RESUME when the round continues every member's previous one."""
    words = np.array([params[k] for k in JOIN_ACK_PARAMS], dtype=">u4")
    hdr = pack_header(
        MsgType.JOIN_ACK,
        flags=Flag.RESUME if resume else 0,
        epoch=epoch,
        job=job,
        worker=worker,
        count=words.size,
        seq=incarnation,
        bitmap=bitmap,
    )
    return hdr + words.tobytes()


def parse_join_ack(
    datagram: bytes | bytearray | memoryview, nbytes: int | None = None
) -> dict[str, int] | None:
    """JOIN_ACK_PARAMS from a JOIN_ACK's payload, or None when its length is not that of a JOIN_ACK."""
    n = len(datagram) if nbytes is None else nbytes
    words = len(JOIN_ACK_PARAMS)
    if n != HEADER_SIZE + 4 * words or int.from_bytes(datagram[OFF_COUNT : OFF_COUNT + 2], "big") != words:
        return None
    return dict(
        zip(JOIN_ACK_PARAMS, np.frombuffer(datagram, ">u4", words, HEADER_SIZE).tolist(), strict=True)
    )


def encode(header: Header, payload: np.ndarray | None = None) -> bytes:
    """Header plus payload (int32 elements, converted to network byte order) as one datagram."""
    if payload is None or payload.size == 0:
        if header.count != 0 and not header.flags & Flag.EMPTY:
            raise ProtocolError(f"header says count={header.count} but there is no payload")
        return header.pack()
    if payload.size != header.count:
        raise ProtocolError(f"header says count={header.count} but the payload has {payload.size}")
    return header.pack() + np.ascontiguousarray(payload, dtype=PAYLOAD_DTYPE).tobytes()


def decode(datagram: bytes | bytearray | memoryview) -> tuple[Header, np.ndarray]:
    """Parse one datagram into its header and a read-only payload view (``>i4``).

    Raises :class:`ProtocolError` for anything a receiver must drop: too short, another version,
    an unknown type, an unknown ``op``, or a length that disagrees with ``count`` (24 bytes with
    ``EMPTY``: the payload is then empty).
    """
    n = len(datagram)
    if n < HEADER_SIZE:
        raise ProtocolError(f"datagram of {n} bytes is shorter than the {HEADER_SIZE}-byte header")
    version, mtype, flags, epoch, job, worker, slot, count, seq, exp, op, bitmap = HEADER.unpack_from(
        datagram
    )
    if version != VERSION:
        raise ProtocolError(f"version {version}, expected {VERSION}")
    if mtype not in _TYPES:
        raise ProtocolError(f"unknown message type {mtype}")
    if not check_op(op):
        raise ProtocolError(f"op field {op:#06x} names no known collective and reduction")
    size = HEADER_SIZE if flags & Flag.EMPTY else HEADER_SIZE + 4 * count
    if n != size:
        raise ProtocolError(f"count={count} needs {size} bytes, datagram has {n}")
    header = Header(
        type=mtype,
        job=job,
        worker=worker,
        slot=slot & (SET_BIT - 1),
        set=1 if slot & SET_BIT else 0,
        count=count,
        seq=seq,
        exp=exp,
        flags=flags,
        epoch=epoch,
        bitmap=bitmap,
        op=op,
        version=version,
    )
    payload = np.frombuffer(datagram, dtype=PAYLOAD_DTYPE, count=(n - HEADER_SIZE) // 4, offset=HEADER_SIZE)
    return header, payload


_TYPES = frozenset(int(t) for t in MsgType)


@functools.lru_cache(maxsize=64)
def record_dtype(count: int) -> np.dtype:
    """One datagram with ``count`` payload elements as a numpy record: ``h`` (the header fields) and
    ``p`` (the payload), for reading or writing many same-size datagrams at once."""
    return np.dtype([("h", HEADER_DTYPE), ("p", PAYLOAD_DTYPE, (count,))])


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port), with a clear error for anything else (port 0 is
    allowed: "any free port" where something listens)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def scale_bits(total_workers: int) -> int:
    """Bits of magnitude each worker's quantized values may use: ``30 - ceil(log2(W))``.

    With every |q| <= 2**B, the sum of W contributions is at most W * 2**B <= 2**30 < 2**31 - 1, so
    the int32 sum cannot overflow (docs/protocol.md, "Quantization").
    """
    if total_workers < 1:
        raise ValueError(f"total_workers must be >= 1, got {total_workers}")
    return 30 - (total_workers - 1).bit_length()


def static_job_slots(elements: int) -> int:
    """Slots of a static job on the Python switch (``netagg switch --workers`` without ``--slots``).

    Measured on the 2-core loopback setup (docs/measurements.md, docs/protocol.md "Sizing"): 16 large
    packets keep the data in flight cache-sized; small packets go in GSO runs of 64 and need many runs
    in flight (128 slots: 1.2 s for 16 MiB at W=4; 1024: 0.66 s). Jobs the controller places without a
    slot count get its own default instead (``controller.placement.placement_slots``, a ~1 MiB window
    per worker, as proto/netagg/v1/control.proto documents).

    Example::

        >>> static_job_slots(64), static_job_slots(1024), static_job_slots(16370)
        (1024, 16, 16)
    """
    return 16 if elements >= 1024 else 1024
