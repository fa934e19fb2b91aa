"""The aggregation dataplane: slot pool, two sets per slot, bitmaps, counters. No sockets here.

:class:`Dataplane` takes one datagram and the address it came from and returns what to send where. The
rules it implements are those of docs/protocol.md ("Switch rules"); the I/O backends
(:mod:`switch.udp`) move bytes and nothing else, so the same core serves every backend and the tests.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import struct
import time
from collections.abc import Callable, Iterable

import numpy as np

from netagg.kernels import add_net
from netagg.protocol import (
    HEADER,
    HEADER_SIZE,
    OFF_FLAGS,
    OFF_WORKER,
    SET_BIT,
    VERSION,
    Flag,
    MsgType,
    join_packet,
    pending_packet,
    record_dtype,
)
from switch.jobs import (
    DROP_REASONS,
    SEQ_NONE,
    Address,
    JobConfig,
    JobState,
    Output,
    Segments,
    check_disjoint,
)

# JobConfig and the rest are the dataplane's vocabulary: importable from here as before.
__all__ = ["DROP_REASONS", "Dataplane", "JobConfig", "Output", "Segments", "check_disjoint"]

_WORKER_ALL = 0xFFFF
_SWITCH_TYPES = frozenset((MsgType.CONTRIB, MsgType.JOIN))  # what a switch receives
# Plain ints for the packet path (IntEnum/IntFlag operators cost microseconds each).
_RETX, _UNICAST = int(Flag.RETX), int(Flag.UNICAST)
_RESULT, _PENDING, _CONTRIB = int(MsgType.RESULT), int(MsgType.PENDING), int(MsgType.CONTRIB)


class Dataplane:
    """The aggregation switch's dataplane for any number of jobs with disjoint slot ranges."""

    def __init__(
        self,
        jobs: Iterable[JobConfig] = (),
        *,
        join_refresh: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``join_refresh``: a worker counts towards a JOIN round only if it has (re)sent its JOIN within
        this many seconds, so members that died or were forged age out; ``clock`` is for tests."""
        self._jobs: dict[int, JobState] = {}
        self.join_refresh = join_refresh
        self._clock = clock
        self.counters: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter({r: 0 for r in DROP_REASONS})
        for cfg in jobs:
            self.install(cfg)

    # -- configuration -------------------------------------------------------------------------
    def install(self, cfg: JobConfig) -> None:
        """Add a job. Raises ValueError if its id is taken or its slots overlap another job's."""
        if cfg.job_id in self._jobs:
            raise ValueError(f"job {cfg.job_id} is already installed")
        check_disjoint(cfg, [j.cfg for j in self._jobs.values()])
        addrs: list[Address | None] = list(cfg.addresses) if cfg.addresses else [None] * cfg.workers
        self._jobs[cfg.job_id] = JobState(cfg, addrs, [0] * cfg.workers, [0.0] * cfg.workers)

    def set_addresses(self, job_id: int, addresses: tuple[Address, ...]) -> None:
        """Fix a job's worker addresses (index = worker id). If they differ from the addresses its
        members joined from, a new JOIN round begins. KeyError if the job is not installed."""
        job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(f"job {job_id} is not installed")
        cfg = dataclasses.replace(job.cfg, addresses=tuple(addresses))  # validates the count
        job.cfg = cfg
        if list(addresses) != job.addrs:
            job.joined = False
            job.incarnation = [0] * cfg.workers
            job.addrs = list(addresses)

    def remove(self, job_id: int) -> None:
        """Remove a job; its packets are dropped as unknown_job from now on."""
        if self._jobs.pop(job_id, None) is None:
            raise KeyError(f"job {job_id} is not installed")

    @property
    def jobs(self) -> list[JobConfig]:
        return [j.cfg for j in self._jobs.values()]

    def reset_counters(self) -> dict[str, object]:
        """Zero every counter; return what they were."""
        before = self.stats()
        self.counters.clear()
        self.drops = collections.Counter({r: 0 for r in DROP_REASONS})
        return before

    def stats(self) -> dict[str, object]:
        """Counters as plain data: packets/bytes in and out, events, and drops by reason."""
        return {"counters": dict(self.counters), "drops": dict(self.drops)}

    # -- the packet path -----------------------------------------------------------------------
    def handle(self, data: bytes | bytearray | memoryview, src: Address) -> list[Output]:
        """Process one datagram from ``src``; return the datagrams to send. Never raises on bad input."""
        n = len(data)
        counters = self.counters
        counters["packets_in"] += 1
        counters["bytes_in"] += n
        if n < HEADER_SIZE:
            return self._drop("truncated")
        version, mtype, flags, epoch, job_id, worker, slot, count, seq, exp, reserved, _ = HEADER.unpack_from(
            data
        )
        if version != VERSION:
            return self._drop("bad_version")
        if reserved:
            return self._drop("bad_reserved")
        if n != HEADER_SIZE + 4 * count:
            return self._drop("bad_length")
        if mtype not in _SWITCH_TYPES:
            parent_job = self._jobs.get(job_id)
            if parent_job is not None and parent_job.cfg.parent is not None and src == parent_job.cfg.parent:
                return self._from_parent(parent_job, data, mtype, epoch, slot, count, seq, exp)
            return self._drop("bad_type")
        job = self._jobs.get(job_id)
        if job is None:
            return self._drop("unknown_job")
        if worker >= job.cfg.workers:
            return self._drop("bad_worker")
        if mtype == _CONTRIB:
            return self._contribute(job, data, src, flags, epoch, worker, slot, count, seq, exp)
        return self._join(job, src, worker, seq)

    def _drop(self, reason: str) -> list[Output]:
        self.drops[reason] += 1
        return []

    def _emit(self, outs: list[Output]) -> list[Output]:
        for data, dests in outs:
            datagrams = data.datagrams if isinstance(data, Segments) else 1
            self.counters["packets_out"] += datagrams * len(dests)
            self.counters["bytes_out"] += len(data) * len(dests)
        return outs

    # -- the batch path ------------------------------------------------------------------------
    def handle_batch(self, data: bytes | bytearray | memoryview, seg: int, src: Address) -> list[Output]:
        """Process datagrams of ``seg`` bytes back to back in ``data`` (a GRO batch from ``src``; the
        last may be shorter). Same results as :meth:`handle` on each datagram in turn: the common case
        (first contributions to distinct slots of one job) is done with numpy over the whole batch,
        anything else goes through :meth:`handle` one datagram at a time."""
        view = memoryview(data)
        n = len(view)
        if seg <= 0 or seg >= n:
            return self.handle(view, src)
        k = n // seg
        outs = self._contribute_batch(view[: k * seg], seg, k, src) if k > 1 else None
        if outs is None:
            outs = []
            for off in range(0, k * seg, seg):
                outs += self.handle(view[off : off + seg], src)
        if k * seg < n:
            outs += self.handle(view[k * seg :], src)
        return outs

    def _contribute_batch(self, view: memoryview, seg: int, k: int, src: Address) -> list[Output] | None:
        """The vectorized common case, or None (nothing changed) if the batch is not that case."""
        count = (seg - HEADER_SIZE) // 4
        if seg < HEADER_SIZE or HEADER_SIZE + 4 * count != seg:
            return None
        rec = np.frombuffer(view, record_dtype(count), k)
        h = rec["h"]
        job_ids = h["job"]
        job = self._jobs.get(int(job_ids[0]))
        if job is None or not job.joined or count > job.cfg.elements or job.cfg.parent is not None:
            return None
        cfg = job.cfg
        slot_field = h["slot"].astype(np.int64)
        seq = h["seq"].astype(np.int64)
        setbit = slot_field >> 15
        i = (slot_field & (SET_BIT - 1)) - cfg.slot_base
        worker = h["worker"].astype(np.int64)
        if not (
            (h["version"] == VERSION).all()
            and (h["type"] == _CONTRIB).all()
            and (h["reserved"] == 0).all()
            and (h["count"] == count).all()
            and (job_ids == cfg.job_id).all()
            and (h["epoch"] == job.epoch).all()
            and (worker < cfg.workers).all()
            and (i >= 0).all()
            and (i < cfg.slots).all()
            and (setbit == (seq & 1)).all()
        ):
            return None
        if any(job.addrs[w] != src for w in set(worker.tolist())):
            return None
        keys = 2 * i + setbit
        key_list = keys.tolist()
        if len(set(key_list)) != k:
            return None
        cur = np.array([job.seq[x] for x in key_list], dtype=np.int64)
        diff = (seq - cur) & 0xFFFFFFFF
        newer = (cur == SEQ_NONE) | ((diff != 0) & (diff < 0x80000000))
        same = ~newer & (diff == 0)
        bitmap = np.array([job.bitmap[x] for x in key_list], dtype=np.int64)
        nelem = np.array([job.nelem[x] for x in key_list], dtype=np.int64)
        bit = np.left_shift(1, worker)
        if not (newer | (same & (nelem == count) & ((bitmap & bit) == 0))).all():
            return None  # stale, mismatched or repeated packets: the one-packet path counts them
        # From here on this is exactly what handle() would do for each packet in turn.
        bitmap[newer] = 0
        expmax = np.array([job.expmax[x] for x in key_list], dtype=np.int64)
        expmax[newer] = 0
        payload = rec["p"]
        first = bitmap == 0
        acc = job.out_payload_all
        if first.any():
            acc[keys[first], :count] = payload[first]
        if not first.all():
            rest = keys[~first]
            acc[rest, :count] += payload[~first]
        bitmap |= bit
        expmax = np.maximum(expmax, h["exp"])
        flags = h["flags"]
        for x, s, b, e in zip(key_list, seq.tolist(), bitmap.tolist(), expmax.tolist(), strict=True):
            job.seq[x] = s
            job.bitmap[x] = b
            job.nelem[x] = count
            job.expmax[x] = e
            job.ready[x] = b == job.full
        c = self.counters
        c["packets_in"] += k
        c["bytes_in"] += k * seg
        c["contributions"] += k
        if retx := int(np.count_nonzero(flags & _RETX)):
            c["retransmissions"] += retx
        done = bitmap == job.full
        if not done.any():
            return []
        dk = keys[done]
        res = np.zeros(int(dk.size), dtype=record_dtype(count))
        rh = res["h"]
        rh["version"] = VERSION
        rh["type"] = _RESULT
        rh["epoch"] = job.epoch
        rh["job"] = cfg.job_id
        rh["worker"] = _WORKER_ALL
        rh["slot"] = slot_field[done]
        rh["count"] = count
        rh["seq"] = seq[done]
        rh["exp"] = expmax[done]
        rh["bitmap"] = job.full
        res["p"] = acc[dk, :count]
        raw = res.view(np.uint8).reshape(dk.size, seg)
        job.out_all[dk, :seg] = raw
        c["completions"] += int(dk.size)
        return self._emit([(Segments(raw.reshape(-1).data, seg), job.result_dests)])

    def _join(self, job: JobState, src: Address, worker: int, incarnation: int) -> list[Output]:
        if incarnation == 0:
            return self._drop("bad_incarnation")
        cfg = job.cfg
        if cfg.addresses is not None and src != cfg.addresses[worker]:
            return self._drop("wrong_source")
        self.counters["joins"] += 1
        now = self._clock()
        if job.incarnation[worker] == incarnation:  # a repeat of a JOIN we have
            job.join_time[worker] = now
            if job.joined:
                return self._emit([(job.join_ack(worker), [src])])
            return self._emit([(job.pending_join(worker, incarnation), [src])])
        if job.joined:  # a new incarnation after a complete round: a new round begins
            job.joined = False
            job.incarnation = [0] * cfg.workers
            if cfg.addresses is None:
                job.addrs = [None] * cfg.workers
        job.incarnation[worker] = incarnation
        job.join_time[worker] = now
        if cfg.addresses is None:
            job.addrs[worker] = src
        for w in range(cfg.workers):  # members that stopped refreshing their JOIN are gone
            if job.incarnation[w] and now - job.join_time[w] > self.join_refresh:
                job.incarnation[w] = 0
                self.counters["join_expired"] += 1
        if not all(job.incarnation):
            return self._emit([(job.pending_join(worker, incarnation), [src])])
        job.joined = True
        job.epoch = (job.epoch + 1) & 0xFF
        job.reset_slots()
        job.result_dests = [cfg.multicast] if cfg.multicast else list(job.addrs)
        self.counters["epochs"] += 1
        outs: list[Output] = [(job.join_ack(w), [job.addrs[w]]) for w in range(cfg.workers)]
        if cfg.parent is not None:  # a new round here is a new round of this switch at its parent
            job.parent_incarnation = secrets.randbits(32) or 1
            job.parent_epoch = None
            outs.append(self._parent_join(job))
        return self._emit(outs)

    # -- aggregation trees ---------------------------------------------------------------------
    def _parent_join(self, job: JobState) -> Output:
        c = job.cfg
        pkt = join_packet(c.job_id, c.parent_worker, job.parent_incarnation)
        self.counters["parent_joins_sent"] += 1
        return (pkt, [c.parent])

    def _up(self, job: JobState, k: int, slot: int, seq: int, count: int, *, retx: bool) -> list[Output]:
        """The partial sum of a complete use, as this switch's contribution at the parent (or, before
        the parent has acknowledged this switch's JOIN, the JOIN again)."""
        c = job.cfg
        if job.parent_epoch is None:
            return [self._parent_join(job)]
        # Positional, in protocol.FIELDS order: the per-packet path of a tree (one partial per use).
        hdr = HEADER.pack(
            VERSION,
            _CONTRIB,
            _RETX if retx else 0,
            job.parent_epoch,
            c.job_id,
            c.parent_worker,
            slot,
            count,
            seq,
            job.expmax[k],
            0,
            0,
        )
        self.counters["partials_resent" if retx else "partials_sent"] += 1
        return [(hdr + job.out_view[k][HEADER_SIZE : HEADER_SIZE + 4 * count], [c.parent])]

    def _from_parent(
        self,
        job: JobState,
        data: bytes | bytearray | memoryview,
        mtype: int,
        epoch: int,
        slot: int,
        count: int,
        seq: int,
        exp: int,
    ) -> list[Output]:
        """A JOIN_ACK, PENDING or RESULT from the parent: the RESULT of a use goes down to the workers."""
        c = job.cfg
        self.counters["from_parent"] += 1
        if mtype == MsgType.JOIN_ACK:
            if seq == job.parent_incarnation:
                job.parent_epoch = epoch
            return []
        if mtype != _RESULT:
            return []  # PENDING: the workers' retransmissions will make this switch ask again
        i = (slot & (SET_BIT - 1)) - c.slot_base
        k = 2 * i + (1 if slot & SET_BIT else 0)
        if (
            epoch != job.parent_epoch
            or not 0 <= i < c.slots
            or job.seq[k] != seq
            or job.nelem[k] != count
            or job.bitmap[k] != job.full
            or job.ready[k]
        ):
            self.counters["parent_stale"] += 1
            return []
        end = HEADER_SIZE + 4 * count  # the datagram's length (checked in handle)
        job.out_view[k][HEADER_SIZE:end] = data[HEADER_SIZE:end]
        return self._result(job, k, slot, count, seq, exp)

    def _result(self, job: JobState, k: int, slot: int, count: int, seq: int, exp: int) -> list[Output]:
        """The set's RESULT is known: its header goes in front of the payload already in
        ``job.out_view[k]`` (kept for repeats), and it goes to every worker of the job."""
        job.ready[k] = True
        out = job.out_view[k]
        # Positional, in protocol.FIELDS order: the per-packet path (one RESULT per use).
        HEADER.pack_into(
            out,
            0,
            VERSION,
            _RESULT,
            0,
            job.epoch,
            job.cfg.job_id,
            _WORKER_ALL,
            slot,
            count,
            seq,
            exp,
            0,
            job.full,
        )
        dests, size = job.result_dests, HEADER_SIZE + 4 * count
        counters = self.counters  # what _emit() counts, without its loop: the per-packet path
        counters["packets_out"] += len(dests)
        counters["bytes_out"] += size * len(dests)
        return [(out[:size], dests)]

    def _contribute(
        self,
        job: JobState,
        data: bytes | bytearray | memoryview,
        src: Address,
        flags: int,
        epoch: int,
        worker: int,
        slot: int,
        count: int,
        seq: int,
        exp: int,
    ) -> list[Output]:
        cfg = job.cfg
        setbit = 1 if slot & SET_BIT else 0
        i = (slot & (SET_BIT - 1)) - cfg.slot_base
        if not 0 <= i < cfg.slots:
            return self._drop("bad_slot")
        if count > cfg.elements:
            return self._drop("bad_length")
        if (seq & 1) != setbit:
            return self._drop("bad_set")
        if not job.joined:
            return self._drop("not_joined")
        if epoch != job.epoch:
            return self._drop("stale_epoch")
        if src != job.addrs[worker]:
            return self._drop("wrong_source")
        if flags & _RETX:
            self.counters["retransmissions"] += 1
        k = 2 * i + setbit
        cur = job.seq[k]
        if cur == SEQ_NONE or 0 < ((seq - cur) & 0xFFFFFFFF) < 0x80000000:
            # A newer use of this set: by the protocol every worker has the result of the use it
            # replaces (docs/protocol.md, "Slot reuse"), so its state can go.
            job.seq[k] = seq
            job.bitmap[k] = 0
            job.nelem[k] = count
            job.expmax[k] = 0
            job.ready[k] = False
        elif seq != cur:
            return self._drop("stale_seq")
        elif count != job.nelem[k]:
            return self._drop("count_mismatch")
        bit = 1 << worker
        bitmap = job.bitmap[k]
        if bitmap & bit:
            self.counters["repeats"] += 1
            if bitmap == job.full and not job.ready[k]:
                # A tree: the partial went up and the parent's RESULT has not come back (one of the two
                # was lost): the worker's retransmission makes this switch send it again.
                return self._emit(self._up(job, k, slot, seq, count, retx=True))
            if bitmap == job.full:
                self.counters["results_resent"] += 1
                resend = bytearray(job.out_view[k][: HEADER_SIZE + 4 * count])
                resend[OFF_FLAGS] = _UNICAST
                struct.pack_into("!H", resend, OFF_WORKER, worker)
                return self._emit([(resend, [src])])
            self.counters["pending_sent"] += 1
            pend = pending_packet(job.epoch, cfg.job_id, worker, seq, bitmap, slot=slot)
            return self._emit([(pend, [src])])
        acc = job.out_view[k][HEADER_SIZE : HEADER_SIZE + 4 * count]  # len(data) is that + HEADER_SIZE
        if bitmap:
            add_net(acc, data[HEADER_SIZE:])
        else:  # the first contribution of the use
            acc[:] = data[HEADER_SIZE:]
        bitmap |= bit
        job.bitmap[k] = bitmap
        if exp > job.expmax[k]:  # noqa: PLR1730 (max() costs more on the per-packet path)
            job.expmax[k] = exp
        self.counters["contributions"] += 1
        if bitmap != job.full:
            return []
        self.counters["completions"] += 1
        if cfg.parent is not None:
            return self._emit(self._up(job, k, slot, seq, count, retx=False))
        return self._result(job, k, slot, count, seq, job.expmax[k])  # bitmap == job.full here
