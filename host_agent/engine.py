"""The worker's side of one allreduce, as a state machine that touches no socket.

Like the switch's :class:`switch.core.Dataplane`, an engine is fed what arrived and the time, and
returns what to send: :meth:`Engine.start` gives the first window of contributions,
:meth:`DatagramEngine.on_datagram` / :meth:`RunEngine.on_run` take results, and :meth:`Engine.on_timer`
gives the retransmissions that are due. The I/O around it (:mod:`host_agent.transport`, the
:class:`host_agent.Worker` loop) moves bytes and keeps the clock; the protocol property test drives the
same engines against the real dataplane in process, through a channel that loses, duplicates and
reorders.

One :class:`Schedule` says which chunk each use of each slot carries (docs/protocol.md, "Worker
rules"); both engines follow it and the same acceptance rule (a RESULT is taken only for the use the
slot is waiting for, in this epoch, with the chunk's element count). They differ in how they touch the
data: :class:`DatagramEngine` handles one datagram at a time with scalar state (large packets: a few
kernel calls per packet), :class:`RunEngine` handles runs of small packets (UDP GSO/GRO) with numpy
operations over arrays of slots (:mod:`host_agent.runs`).
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np

from host_agent.errors import NetAggTimeout, NonFiniteError
from host_agent.recovery import Recovery, Send
from host_agent.schedule import ALLREDUCE, Collective, Schedule
from host_agent.session import Session
from netagg import kernels
from netagg.protocol import (
    EXP_BIAS,
    EXP_NONE,
    EXP_NONFINITE,
    HEADER,
    HEADER_SIZE,
    OFF_COUNT,
    OFF_FLAGS,
    OFFSET,
    PAYLOAD_DTYPE,
    SET_BIT,
    VERSION,
    Coll,
    Flag,
    MsgType,
    describe_op,
)
from netagg.quantize import dequantize, quantize

__all__ = ["DatagramEngine", "Engine", "RunEngine", "Schedule", "Send", "make_engine"]

# Send (from host_agent.recovery): one thing to send, the datagram's parts (gathered by one sendmsg)
# and, for a run of same-size datagrams sent with one UDP GSO call, the segment size (0: one datagram).

_CONTRIB, _RESULT, _PENDING = int(MsgType.CONTRIB), int(MsgType.RESULT), int(MsgType.PENDING)
_REFUSE, _JOIN_ACK = int(MsgType.REFUSE), int(MsgType.JOIN_ACK)
_RETX, _FINAL, _EMPTY = int(Flag.RETX), int(Flag.FINAL), int(Flag.EMPTY)
_OFF_EPOCH = OFFSET["epoch"]


class Engine(Recovery):
    """What both engines share: the schedule, each slot's position, timers and the end of the call."""

    #: Whether this engine takes runs of datagrams (UDP GRO) rather than one at a time.
    batched = False

    def __init__(
        self,
        session: Session,
        flat: np.ndarray,
        out: np.ndarray,
        factor: float,
        now: float,
        call: Collective = ALLREDUCE,
        schedule: Schedule | None = None,
    ) -> None:
        self.session = session
        self.params = p = session.params
        self.stats = session.stats
        self.flat, self.out, self.factor = flat, out, factor
        self.call = call
        self.call_name = describe_op(call.op(0)).split("(")[0].replace("_", "-")
        self.is_float = flat.dtype == np.float32
        self.bits = p.bits  # read on every packet: not recomputed there
        self.schedule = s = schedule or Schedule.of(flat.size, p.elements, p.slots, self.is_float)
        self.remaining = s.window
        self.last_progress = now
        self.pending: dict[int, int] = {}  # slot -> contributor bitmap of its last PENDING
        self._init_recovery()

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def positions(self) -> tuple[list[int], list[int]]:
        """Each slot's current use and its number of uses."""
        raise NotImplementedError

    def agreed(self) -> np.ndarray:
        """The exponent agreed for each chunk (float calls)."""
        raise NotImplementedError

    def next_deadline(self) -> float:
        """When the earliest retransmission is due (inf when nothing waits)."""
        raise NotImplementedError

    def start(self, now: float) -> list[Send]:
        raise NotImplementedError

    def on_timer(self, now: float) -> list[Send]:
        raise NotImplementedError

    def finish(self, nonfinite: str) -> np.ndarray:
        """The call is complete: advance the slots' use numbers; raise :class:`NonFiniteError` (at every
        worker alike) if some block's agreed exponent says inf/NaN and ``nonfinite`` is "raise"."""
        _, nuses = self.positions()
        self.session.seq[: self.schedule.window] += np.asarray(nuses, dtype=np.int64)
        self.keep_last()
        if self.is_float and nonfinite == "raise":
            bad = np.flatnonzero(self.agreed() == EXP_NONFINITE)
            if bad.size:
                n, total = self.schedule.elements, self.schedule.total
                spans = ", ".join(f"[{c * n}, {min(total, (c + 1) * n)})" for c in bad[:5])
                more = " ..." if bad.size > 5 else ""
                raise NonFiniteError(
                    f"inf or NaN in the input of some worker: elements {spans}{more} have no finite sum"
                )
        return self.out

    def stalled(self, who: str, timeout: float, switch: str) -> NetAggTimeout:
        """The error for a call that made no progress for ``timeout`` seconds, naming what it waits for."""
        pos, nuses = self.positions()
        s, p = self.schedule, self.params
        if self.rejoin is not None:
            return NetAggTimeout(
                f"{who}: rejoining job {p.job} at {switch} after it said {self.rejoin_reason}: workers "
                f"{self.rejoin.missing(p.fanin)} have not rejoined in {timeout:g}s (the allreduce of "
                f"{s.total} elements waits for them)"
            )
        waiting = [j for j in range(s.window) if pos[j] < nuses[j]]
        missing: set[int] = set()
        lines = []
        for j in waiting:
            what = "exponent exchange" if pos[j] < s.boot else f"chunk {s.chunk(j, pos[j])}"
            if j in self.pending:
                gone = [w for w in range(p.fanin) if not self.pending[j] >> w & 1]
                missing.update(gone)
                lines.append(f"{what} (slot {p.slot_base + j}): waiting for workers {gone}")
            else:
                lines.append(f"{what} (slot {p.slot_base + j}): no answer from the switch")
        head = (
            f"{who}: {self.call_name} of {s.total} elements ({s.nchunks} chunks) made no progress "
            f"for {timeout:g}s; {len(waiting)} slots stuck after {sum(pos)} completed uses. "
        )
        if missing:
            head += (
                f"Workers {sorted(missing)} have not contributed (gone, or calling another collective or "
                "size). "
            )
        elif not self.pending:
            head += f"The switch at {switch} answered none of the retransmissions. "
            if self.batched:
                head += (
                    "(A switch that reads its links with pcap, such as BMv2 on veth, cannot take GSO runs: "
                )
                head += "try batch=False.) "
        more = f" (+{len(lines) - 6} more)" if len(lines) > 6 else ""
        return NetAggTimeout(head + "; ".join(lines[:6]) + more)


class DatagramEngine(Engine):
    """One datagram at a time (large packets). The hot path: per-slot state in plain lists, and each
    chunk costs a few :mod:`netagg.kernels` calls on one row."""

    kept_as_received = True

    def __init__(
        self,
        session: Session,
        flat: np.ndarray,
        out: np.ndarray,
        factor: float,
        now: float,
        call: Collective = ALLREDUCE,
        schedule: Schedule | None = None,
    ) -> None:
        super().__init__(session, flat, out, factor, now, call, schedule)
        self._op = call.op(0) if call.plain else -1  # an allreduce's op field: the same for every use
        # A reduce-scatter keeps each slot's previous contribution: after a switch restart it is sent
        # again for a use whose result this worker got without payload (docs/protocol.md, "Recovery").
        self._keep_prev = call.coll == Coll.reduce_scatter
        if self._keep_prev:
            n = self.schedule.elements
            self._prev_rows = [np.empty(n, PAYLOAD_DTYPE) for _ in range(self.schedule.window)]
            self._prev_headers = [b""] * self.schedule.window
        self._sent = [0] * self.schedule.window  # the use whose contribution is in rows[j]
        # Fast retransmission (docs/protocol.md, "Worker rules"): the uses in the order they were sent,
        # (time, slot, use); the oldest ones still in flight are resent once a later one completed.
        self._order: collections.deque[tuple[float, int, int]] = collections.deque()
        w = self.schedule.window
        self.nuses = self.schedule.uses()
        self.base = [int(s) for s in session.seq[:w]]
        self.pos = [0] * w
        self.deadline = [math.inf] * w
        self.sent_at = [0.0] * w
        self.tries = [0] * w
        self.headers: list[bytes] = [b""] * w
        # Each slot's packet payload, whole (a collective's chunks may be shorter than the job's packets).
        self.rows = [row[: self.schedule.elements] for row in session.payload[:w]]
        self._agreed = [0] * (self.schedule.nchunks if self.is_float else 0)
        self._out_bits = self.out.view(np.uint32)  # where FINAL results are copied
        self._rto = session.rto.value
        self._got_buf: Any = None
        self._got_whole: np.ndarray | None = None

    def positions(self) -> tuple[list[int], list[int]]:
        return self.pos, self.nuses

    def agreed(self) -> np.ndarray:
        return np.array(self._agreed, dtype=np.uint16)

    def base_seq(self, j: int) -> int:
        return self.base[j]

    def next_deadline(self) -> float:
        return self.join_due if self.rejoin is not None else min(self.deadline)

    def contribution(self, j: int, k: int) -> bytes | None:
        """This worker's contribution to use ``k`` of slot ``j`` (the one in flight or, for a
        reduce-scatter, the one before), as sent, with RETX (epoch 0: set when sent again)."""
        if k == self._sent[j] and self.headers[j]:
            hdr, row = self.headers[j], self.rows[j]
        elif k == self._sent[j] - 1 and self._keep_prev and self._prev_headers[j]:
            hdr, row = self._prev_headers[j], self._prev_rows[j]
        else:
            return None
        again, payload = _again(hdr, row)
        return bytes(again) + payload.tobytes()

    def start(self, now: float) -> list[Send]:
        return [self._send(j, 0, now) for j in range(self.schedule.window)]

    def _resend_all(self, now: float) -> list[Send]:
        sends: list[Send] = []
        for j in range(self.schedule.window):
            if self.pos[j] < self.nuses[j]:
                hdr = bytearray(self.headers[j])
                hdr[_OFF_EPOCH] = self.params.epoch
                self.headers[j] = bytes(hdr)
                sends.append((_again(hdr, self.rows[j]), 0))
                self.tries[j] = 1  # Karn: no sample from this use
                self.deadline[j] = now + self._rto
        return sends

    def _send(self, j: int, k: int, now: float) -> Send:
        """Use k of slot j: quantize its chunk (none for an exponent-only use) and send it."""
        s, flat, bits = self.schedule, self.flat, self.bits
        n, window, boot = s.elements, s.window, s.boot
        c = -1 if k < boot else j + (k - boot) * window
        cnt = flags = 0
        if self._keep_prev and k:  # the previous use's bytes stay, for a resend after a restart
            self.rows[j], self._prev_rows[j] = self._prev_rows[j], self.rows[j]
            self._prev_headers[j] = self.headers[j]
        self._sent[j] = k
        dst = self.rows[j]
        if c >= 0 and self._op < 0 and not self.call.sends(c):  # another rank's shard: no payload
            flags = _EMPTY
            cnt = s.count(c)
            dst = dst[:0]
        elif c >= 0:
            if s.shard:  # chunks of shards: each shard's last chunk may be short
                lo, cnt = s.offset(c), s.count(c)
                if cnt != n:
                    dst = dst[:cnt]
            elif c < s.nfull:
                lo, cnt = c * n, n
            else:
                lo = c * n
                cnt = s.total - lo
                dst = dst[:cnt]
            if self.is_float:
                e = self._agreed[c]
                shift = bits + EXP_BIAS - e
                if e in (EXP_NONE, EXP_NONFINITE) or shift > 127:  # zero, inf/NaN, tiny: rare
                    quantize(
                        flat[lo : lo + cnt].reshape(1, -1),
                        np.array([e], np.uint16),
                        bits,
                        out=dst.reshape(1, -1),
                    )
                else:
                    kernels.quantize(flat[lo : lo + cnt], 2.0**shift, dst)
            else:
                dst[...] = flat[lo : lo + cnt]
        else:
            dst = dst[:0]
        # The exponent of this slot's next chunk is read now, one window ahead of quantizing it: the
        # chunk is then still in the CPU's cache when quantized (one pass over memory, not two).
        proposal = EXP_NONE
        if self.is_float and k + 1 < self.nuses[j]:
            nc = j + (k + 1 - boot) * window
            lo, hi = (s.offset(nc), s.offset(nc) + s.count(nc)) if s.shard else (nc * n, nc * n + n)
            proposal = kernels.block_exponent(flat[lo:hi], EXP_BIAS, EXP_NONE, EXP_NONFINITE)
        p = self.params
        seq = (self.base[j] + k) & 0xFFFFFFFF
        # Positional, in protocol.FIELDS order: the per-packet path.
        hdr = HEADER.pack(
            VERSION,
            _CONTRIB,
            flags,
            p.epoch,
            p.job,
            p.worker_id,
            (p.slot_base + j) | ((seq & 1) << 15),
            cnt,
            seq,
            proposal,
            self._op if self._op >= 0 else self.call.op(c),
            0,
        )
        self.headers[j] = hdr
        self._order.append((now, j, k))
        self.sent_at[j] = now
        self.tries[j] = 0
        self.deadline[j] = now + self._rto
        return ((hdr, dst), 0)

    def on_timer(self, now: float) -> list[Send]:
        if self.rejoin is not None:
            return self.rejoin_timer(now)
        sends: list[Send] = []
        if now < min(self.deadline):
            return sends
        for j, due in enumerate(self.deadline):
            if due <= now:
                sends.append(self._retransmit(j, now))
        self.stats.retransmissions += len(sends)
        return sends + self.reoffers(now) if sends else sends

    def _retransmit(self, j: int, now: float) -> Send:
        """Slot j's use in flight again, with RETX; its timer backs off."""
        self.tries[j] += 1
        self.deadline[j] = now + min(self.session.rto.max_rto, self._rto * 2.0 ** min(self.tries[j], 16))
        return (_again(self.headers[j], self.rows[j]), 0)

    def _fast(self, acked: float, now: float) -> None:
        """A RESULT came for a use sent at ``acked``: the uses in flight sent more than the reordering
        window before it are resent now (into the outbox), once each."""
        order, pos = self._order, self.pos
        before = acked - self.session.rto.reorder_window
        while order and (pos[order[0][1]] > order[0][2] or order[0][0] < before):
            sent, j, k = order.popleft()
            if pos[j] == k and sent < before:  # still in flight: taken as lost
                self.outbox.append(self._retransmit(j, now))
                self.stats.retransmissions += 1
                self.stats.fast_retransmissions += 1

    def on_datagram(self, buf: Any, nbytes: int, now: float) -> Send | None:
        """Take one received datagram (the first ``nbytes`` of ``buf``); returns the slot's next use
        to send, if the datagram completed one."""
        stats = self.stats
        if nbytes < HEADER_SIZE:
            stats.stale += 1
            return None
        version, mtype, r_flags, r_epoch, r_job, _, r_slot, r_count, r_seq, r_exp, _, r_bitmap = (
            HEADER.unpack_from(buf)
        )
        p, pos, nuses = self.params, self.pos, self.nuses
        j = (r_slot & (SET_BIT - 1)) - p.slot_base
        if (
            version != VERSION
            or r_job != p.job
            or r_epoch != p.epoch
            or not 0 <= j < self.schedule.window
            or pos[j] >= nuses[j]
            or r_seq != (self.base[j] + pos[j]) & 0xFFFFFFFF
        ):
            if mtype == _REFUSE or self.rejoin is not None:
                self.control(buf, nbytes, now)  # the recovery (or a refusal that ends the call)
            else:
                stats.stale += 1
            return None
        if mtype == _PENDING:
            self.pending[j] = r_bitmap
            return None
        s = self.schedule
        k = pos[j]
        c = -1 if k < s.boot else j + (k - s.boot) * s.window
        n = s.elements
        if s.shard:
            cnt, lo = s.count(c), s.offset(c)
        else:
            cnt, lo = (0 if c < 0 else (n if c < s.nfull else s.total - c * n)), c * n
        empty = r_flags & _EMPTY
        if mtype != _RESULT or r_count != cnt or nbytes != (HEADER_SIZE if empty else HEADER_SIZE + 4 * cnt):
            if mtype == _REFUSE:  # about the use in flight
                self.control(buf, nbytes, now)
            else:
                stats.stale += 1
            return None
        held = not empty
        if self._op < 0 and not self.call.receives(c):
            held = False  # another rank's chunk of a reduce-scatter (a tree sends the payload anyway)
        elif empty and cnt:  # a payload this worker needs is missing: not a RESULT for it
            stats.stale += 1
            return None
        if cnt and held:
            if buf is not self._got_buf and len(buf) >= HEADER_SIZE + 4 * n:  # the transport's buffer
                self._got_buf = buf
                self._got_whole = np.frombuffer(buf, PAYLOAD_DTYPE, n, HEADER_SIZE)
            if buf is self._got_buf:
                assert self._got_whole is not None
                got = self._got_whole if cnt == n else self._got_whole[:cnt]
            else:
                got = np.frombuffer(buf, PAYLOAD_DTYPE, cnt, HEADER_SIZE)
            dst = self.out[lo : lo + cnt]
            if r_flags & _FINAL:  # a result that was offered: its values as they are (rare)
                self._out_bits[lo : lo + cnt] = got.view(">u4")
            elif self.is_float:
                e = self._agreed[c]
                rare = e in (EXP_NONE, EXP_NONFINITE)  # zero or inf/NaN; tiny sums (below) too
                scale = 0.0 if rare else math.ldexp(self.factor, e - EXP_BIAS - self.bits)
                if rare or scale < 2.0**-126:  # these go through float64
                    dequantize(
                        got.reshape(1, -1),
                        np.array([e], np.uint16),
                        self.bits,
                        out=dst.reshape(1, -1),
                        factor=self.factor,
                    )
                else:
                    kernels.dequantize(got, scale, dst)
            else:
                dst[...] = got
        if self.is_float and k + 1 < nuses[j]:
            self._agreed[j + (k + 1 - s.boot) * s.window] = r_exp
        if self.tries[j] == 0:  # Karn: only unambiguous samples
            self.session.rto.sample(now - self.sent_at[j])
        if self.pending:
            self.pending.pop(j, None)
        pos[j] = k + 1
        self.last_progress = now
        self._fast(self.sent_at[j], now)
        if k + 1 < nuses[j]:
            return self._send(j, k + 1, now)
        self.deadline[j] = math.inf
        self.remaining -= 1
        if cnt and held:  # the slot's last result: kept for a resume's offers while it is in the cache
            at = (c - s.nchunks + s.window) * n
            self.session.last_vals[at : at + cnt] = self._out_bits[lo : lo + cnt]
        return None


def _again(hdr: bytes | bytearray, row: np.ndarray) -> tuple[bytearray, np.ndarray]:
    """A sent use's header with RETX, and its payload (none for an EMPTY contribution)."""
    out = bytearray(hdr)
    out[OFF_FLAGS] |= _RETX
    cnt = 0 if out[OFF_FLAGS] & _EMPTY else int.from_bytes(out[OFF_COUNT : OFF_COUNT + 2], "big")
    return out, row[:cnt]


def make_engine(
    session: Session,
    flat: np.ndarray,
    out: np.ndarray,
    factor: float,
    now: float,
    *,
    batched: bool,
    call: Collective = ALLREDUCE,
    schedule: Schedule | None = None,
) -> Engine:
    """The engine for one call of ``flat`` (float32 or int32, flat) into ``out``; ``factor`` scales a
    float result (the mean: 1/W). Collectives other than allreduce take the one-datagram engine."""
    if batched and call.plain and schedule is None:
        return RunEngine(session, flat, out, factor, now, call)
    return DatagramEngine(session, flat, out, factor, now, call, schedule)


# The per-run engine lives in its own module; it subclasses Engine, so it is imported once Engine is
# defined (host_agent.runs imports this module).
from host_agent.runs import RunEngine  # noqa: E402
