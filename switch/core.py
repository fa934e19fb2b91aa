"""The aggregation dataplane: slot pool, two sets per slot, bitmaps, counters. No sockets here.

:class:`Dataplane` takes one datagram and the address it came from and returns what to send where. The
rules it implements are those of docs/protocol.md ("Switch rules"); the I/O backends
(:mod:`switch.udp`) move bytes and nothing else, so the same core serves every backend and the tests.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
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
    ROOT_ALL,
    SET_BIT,
    VERSION,
    Coll,
    Flag,
    MsgType,
    Reason,
    ReduceOp,
    check_op,
    pending_packet,
    refuse_packet,
)
from switch.batch import contribute_batch
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
from switch.rounds import Rounds
from switch.tree import TreeNode

# JobConfig and the rest are the dataplane's vocabulary: importable from here as before.
__all__ = ["DROP_REASONS", "Dataplane", "JobConfig", "Output", "Segments", "check_disjoint"]

log = logging.getLogger("netagg.switch")

_WORKER_ALL = 0xFFFF
_SWITCH_TYPES = frozenset((MsgType.CONTRIB, MsgType.JOIN))  # what a switch receives
# Plain ints for the packet path (IntEnum/IntFlag operators cost microseconds each).
_RETX, _UNICAST, _OFFER, _FINAL = int(Flag.RETX), int(Flag.UNICAST), int(Flag.OFFER), int(Flag.FINAL)
_EMPTY = int(Flag.EMPTY)
_RS = int(Coll.reduce_scatter)
_MAX = int(ReduceOp.max)
_RESULT, _PENDING, _CONTRIB = int(MsgType.RESULT), int(MsgType.PENDING), int(MsgType.CONTRIB)
#: Per-job counters (Dataplane.job_stats), besides drops by reason.
JOB_COUNTERS = (
    "packets_in",
    "bytes_in",
    "joins",
    "epochs",
    "contributions",
    "completions",
    "retransmissions",
    "repeats",
    "offers",
    "recoveries",
    "refusals",
)


class _Bucket:
    """A token bucket's state (docs/protocol.md, "Refusals"); a JobState is one too."""

    def __init__(self) -> None:
        self.tokens, self.token_time = 0.0, float("-inf")


class Dataplane(Rounds, TreeNode):
    """The aggregation switch's dataplane for any number of jobs with disjoint slot ranges."""

    def __init__(
        self,
        jobs: Iterable[JobConfig] = (),
        *,
        join_refresh: float = 2.0,
        refuse_rate: float = 1000.0,
        refuse_burst: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``join_refresh``: a worker counts towards a JOIN round only if it has (re)sent its JOIN within
        this many seconds, so members that died or were forged age out; ``refuse_rate`` and
        ``refuse_burst``: the refusals' token bucket per job (per second, and at most at once);
        ``clock`` is for tests."""
        self._jobs: dict[int, JobState] = {}
        self.join_refresh = join_refresh
        self.refuse_rate, self.refuse_burst = refuse_rate, refuse_burst
        self._unknown = _Bucket()  # refusals for job ids that are not installed
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
        job = JobState(cfg, addrs, [0] * cfg.workers, [0.0] * cfg.workers)
        job.token_time = float("-inf")
        self._jobs[cfg.job_id] = job

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
        for job in self._jobs.values():
            job.counters.clear()
            job.drops.clear()
        return before

    def stats(self) -> dict[str, object]:
        """Counters as plain data: packets/bytes in and out, events, and drops by reason."""
        return {"counters": dict(self.counters), "drops": dict(self.drops)}

    def job_stats(self) -> dict[int, dict[str, object]]:
        """Per job id: JOB_COUNTERS, ``drops`` by reason, ``joined`` (members now), ``epoch`` and
        ``running`` (the round is complete). Drops before a job is known (unknown_job, malformed
        headers) are only in :meth:`stats`."""
        out: dict[int, dict[str, object]] = {}
        for job_id, job in list(self._jobs.items()):
            entry: dict[str, object] = {name: job.counters[name] for name in JOB_COUNTERS}
            entry["drops"] = dict(job.drops)
            entry["joined"] = sum(1 for inc in job.incarnation if inc)
            entry["epoch"] = job.epoch
            entry["running"] = job.joined
            out[job_id] = entry
        return out

    # -- the packet path -----------------------------------------------------------------------
    def handle(self, data: bytes | bytearray | memoryview, src: Address) -> list[Output]:
        """Process one datagram from ``src``; return the datagrams to send. Never raises on bad input."""
        n = len(data)
        counters = self.counters
        counters["packets_in"] += 1
        counters["bytes_in"] += n
        if n < HEADER_SIZE:
            return self._drop("truncated")
        version, mtype, flags, epoch, job_id, worker, slot, count, seq, exp, op, _ = HEADER.unpack_from(data)
        if version != VERSION:
            return self._drop("bad_version")
        if op and not check_op(op):
            return self._drop("bad_op")
        if flags & _EMPTY:
            if n != HEADER_SIZE or flags & _OFFER:
                return self._drop("bad_length")
        elif n != HEADER_SIZE + 4 * count:
            return self._drop("bad_length")
        if mtype not in _SWITCH_TYPES:
            parent_job = self._jobs.get(job_id)
            if parent_job is not None and parent_job.cfg.parent is not None and src == parent_job.cfg.parent:
                return self._from_parent(parent_job, data, mtype, flags, epoch, slot, count, seq, exp, op)
            return self._drop("bad_type")
        job = self._jobs.get(job_id)
        if job is None:
            self._drop("unknown_job")
            return self._refuse(None, Reason.unknown_job, src, job_id, worker, slot, seq)
        jc = job.counters
        jc["packets_in"] += 1
        jc["bytes_in"] += n
        if worker >= job.cfg.workers:
            return self._drop("bad_worker", job)
        if mtype == _CONTRIB:
            if op >> 12 == _RS and (op & 0xFF) != ROOT_ALL and (op & 0xFF) >= job.total:
                return self._drop("bad_op", job)  # a reduce-scatter result for no rank of the job
            return self._contribute(job, data, src, flags, epoch, worker, slot, count, seq, exp, op)
        return self._join(job, data, src, worker, slot, seq, epoch)

    def _drop(self, reason: str, job: JobState | None = None) -> list[Output]:
        self.drops[reason] += 1
        if job is not None:
            job.drops[reason] += 1
        return []

    def _refuse(
        self,
        job: JobState | None,
        reason: Reason,
        src: Address,
        job_id: int,
        worker: int,
        slot: int,
        seq: int,
        detail: int = 0,
    ) -> list[Output]:
        """The REFUSE for a dropped JOIN or CONTRIB (docs/protocol.md, "Refusals"), if the job's token
        bucket (or the one unknown jobs share) has a token."""
        bucket: _Bucket | JobState = self._unknown if job is None else job
        now = self._clock()
        tokens = min(self.refuse_burst, bucket.tokens + (now - bucket.token_time) * self.refuse_rate)
        bucket.token_time = now
        if tokens < 1.0:
            bucket.tokens = tokens
            self.counters["refusals_suppressed"] += 1
            return []
        bucket.tokens = tokens - 1.0
        self.counters["refusals"] += 1
        epoch = 0
        if job is not None:
            job.counters["refusals"] += 1
            epoch = job.epoch
        log.debug("job %d worker %d: refused (%s) %s", job_id, worker, reason.name, src)
        return self._emit([(refuse_packet(reason, epoch, job_id, worker, slot, seq, detail), [src])])

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
        outs = contribute_batch(self._jobs, self.counters, view, seg, k, src)
        return self._emit(outs) if outs else outs

    def _result(
        self, job: JobState, k: int, slot: int, count: int, seq: int, exp: int, flags: int = 0
    ) -> list[Output]:
        """The set's RESULT is known: its header goes in front of the payload already in
        ``job.out_view[k]`` (kept for repeats), and it goes to every worker of the job."""
        job.ready[k] = True
        out = job.out_view[k]
        op = job.op[k]
        if not job.data[k]:  # no packet of the use carried a payload
            flags |= _EMPTY
        # Positional, in protocol.FIELDS order: the per-packet path (one RESULT per use).
        HEADER.pack_into(
            out,
            0,
            VERSION,
            _RESULT,
            flags,
            job.epoch,
            job.cfg.job_id,
            _WORKER_ALL,
            slot,
            count,
            seq,
            exp,
            op,
            job.full,
        )
        size = HEADER_SIZE if flags & _EMPTY else HEADER_SIZE + 4 * count
        if op and self._owner_only(job, k) and not flags & _EMPTY:
            return self._emit(self._scatter(job, k, size))
        dests = job.result_dests
        counters = self.counters  # what _emit() counts, without its loop: the per-packet path
        counters["packets_out"] += len(dests)
        counters["bytes_out"] += size * len(dests)
        return [(out[:size], dests)]

    @staticmethod
    def _owner_only(job: JobState, k: int) -> bool:
        """Whether the set's use is a reduce-scatter whose payload goes to one worker (docs/protocol.md,
        "Collectives"): not in a switch with a parent, nor with root 0xFF."""
        op = job.op[k]
        return op >> 12 == _RS and (op & 0xFF) != ROOT_ALL and job.cfg.parent is None

    @staticmethod
    def _scatter(job: JobState, k: int, size: int) -> list[Output]:
        """A reduce-scatter's RESULT: the payload to the chunk's owner, the header alone (EMPTY) to the
        others, each to its address."""
        out, owner = job.out_view[k], job.op[k] & 0xFF
        empty = bytearray(out[:HEADER_SIZE])
        empty[OFF_FLAGS] |= _EMPTY
        others = [a for w, a in enumerate(job.addrs) if w != owner]
        return [(out[:size], [job.addrs[owner]]), (bytes(empty), others)]

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
        op: int,
    ) -> list[Output]:
        cfg = job.cfg
        setbit = 1 if slot & SET_BIT else 0
        i = (slot & (SET_BIT - 1)) - cfg.slot_base
        if not 0 <= i < cfg.slots:
            return self._drop("bad_slot", job)
        if count > cfg.elements:
            return self._drop("bad_length", job)
        if (seq & 1) != setbit:
            return self._drop("bad_set", job)
        if not job.joined:
            self._drop("not_joined", job)
            return self._refuse(job, Reason.not_joined, src, cfg.job_id, worker, slot, seq, epoch)
        if epoch != job.epoch:
            self._drop("stale_epoch", job)
            return self._refuse(job, Reason.stale_epoch, src, cfg.job_id, worker, slot, seq, epoch)
        if src != job.addrs[worker]:
            self._drop("wrong_source", job)
            return self._refuse(job, Reason.wrong_source, src, cfg.job_id, worker, slot, seq)
        jc = job.counters
        if flags & _RETX:
            self.counters["retransmissions"] += 1
            jc["retransmissions"] += 1
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
            job.op[k] = op
            job.data[k] = False
        elif seq != cur:
            return self._drop("stale_seq", job)
        elif count != job.nelem[k]:
            self._drop("count_mismatch", job)
            return self._refuse(job, Reason.count_mismatch, src, cfg.job_id, worker, slot, seq, job.nelem[k])
        elif op != job.op[k]:
            self._drop("op_mismatch", job)
            return self._refuse(job, Reason.op_mismatch, src, cfg.job_id, worker, slot, seq, job.op[k])
        if flags & _OFFER:
            return self._offer(job, data, worker, k, slot, seq, count, exp, flags)
        bit = 1 << worker
        bitmap = job.bitmap[k]
        if bitmap & bit:
            self.counters["repeats"] += 1
            jc["repeats"] += 1
            if bitmap == job.full and not job.ready[k]:
                # A tree: the partial went up and the parent's RESULT has not come back (one of the two
                # was lost): the worker's retransmission makes this switch send it again.
                return self._emit(self._up(job, k, slot, seq, count, retx=True))
            if bitmap == job.full:
                self.counters["results_resent"] += 1
                stored = job.out_view[k]
                size = HEADER_SIZE if stored[OFF_FLAGS] & _EMPTY else HEADER_SIZE + 4 * count
                if op and worker != op & 0xFF and self._owner_only(job, k):
                    size = HEADER_SIZE  # a reduce-scatter's other workers get the header alone
                resend = bytearray(stored[:size])
                if size == HEADER_SIZE and count:
                    resend[OFF_FLAGS] |= _EMPTY
                resend[OFF_FLAGS] |= _UNICAST  # FINAL, if the result came from an offer, stays
                struct.pack_into("!H", resend, OFF_WORKER, worker)
                return self._emit([(resend, [src])])
            self.counters["pending_sent"] += 1
            pend = pending_packet(job.epoch, cfg.job_id, worker, seq, bitmap, slot=slot)
            return self._emit([(pend, [src])])
        if not flags & _EMPTY:
            acc = job.out_view[k][HEADER_SIZE : HEADER_SIZE + 4 * count]  # len(data) is that + HEADER_SIZE
            if not job.data[k]:  # the first payload of the use
                acc[:] = data[HEADER_SIZE:]
                job.data[k] = True
            elif op & 0xF00:  # max or min
                _combine(acc, data, count, (op >> 8) & 0xF)
            else:
                add_net(acc, data[HEADER_SIZE:])
        bitmap |= bit
        job.bitmap[k] = bitmap
        if exp > job.expmax[k]:  # noqa: PLR1730 (max() costs more on the per-packet path)
            job.expmax[k] = exp
        self.counters["contributions"] += 1
        jc["contributions"] += 1
        if bitmap != job.full:
            return []
        self.counters["completions"] += 1
        jc["completions"] += 1
        if cfg.parent is not None:
            return self._emit(self._up(job, k, slot, seq, count, retx=False))
        return self._result(job, k, slot, count, seq, job.expmax[k])  # bitmap == job.full here

    def _offer(
        self,
        job: JobState,
        data: bytes | bytearray | memoryview,
        worker: int,
        k: int,
        slot: int,
        seq: int,
        count: int,
        exp: int,
        flags: int,
    ) -> list[Output]:
        """An OFFER of use ``seq``'s result (docs/protocol.md, "Recovery"): unless the result is known
        here, it becomes the use's result, whatever had been added, and goes to every worker."""
        self.counters["offers"] += 1
        job.counters["offers"] += 1
        if job.ready[k]:  # the set holds this use (a newer one reset it) and its result is known
            return []
        end = HEADER_SIZE + 4 * count  # the datagram's length (checked in handle)
        job.out_view[k][HEADER_SIZE:end] = data[HEADER_SIZE:end]
        job.data[k] = True
        job.bitmap[k] = job.full
        job.expmax[k] = exp
        self.counters["recoveries"] += 1
        job.counters["recoveries"] += 1
        if job.counters["recoveries"] == 1 or log.isEnabledFor(logging.DEBUG):
            log.info(
                "job %d: slot %d use %d recovered from worker %d's offer",
                job.cfg.job_id,
                slot & (SET_BIT - 1),
                seq,
                worker,
            )
        final = flags & _FINAL
        outs = self._result(job, k, slot, count, seq, exp, final)
        if job.cfg.parent is not None:  # the parent may serve other switches' workers with it
            outs = outs + self._emit(self._up(job, k, slot, seq, count, retx=False, flags=_OFFER | final))
        return outs


def _combine(acc: memoryview, data: bytes | bytearray | memoryview, count: int, reduce: int) -> None:
    """``acc`` = the lane-wise max or min of itself and the datagram's payload (signed int32, network
    byte order)."""
    a = np.frombuffer(acc, ">i4", count)
    b = np.frombuffer(data, ">i4", count, HEADER_SIZE)
    (np.maximum if reduce == _MAX else np.minimum)(a, b, out=a)
