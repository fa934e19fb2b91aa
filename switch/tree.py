"""A switch's side of an aggregation tree (docs/protocol.md, "Aggregation trees" and "Recovery"): its
JOIN at its parent, partial sums going up, the parent's RESULTs coming down, and its recovery when the
parent refuses it (a restarted parent, a new round there). Mixed into :class:`switch.core.Dataplane`;
no sockets here either."""

from __future__ import annotations

import collections
import logging
import secrets

from netagg.protocol import (
    HEADER,
    HEADER_SIZE,
    OFF_FLAGS,
    OFFSET,
    ROOT_ALL,
    SET_BIT,
    VERSION,
    Coll,
    Flag,
    MsgType,
    Reason,
    join_packet,
    parse_join_ack,
)
from switch.jobs import SEQ_NONE, JobState, Output

__all__ = ["TreeNode"]

log = logging.getLogger("netagg.switch")

_RETX, _OFFER, _FINAL, _EMPTY = int(Flag.RETX), int(Flag.OFFER), int(Flag.FINAL), int(Flag.EMPTY)
_RS = int(Coll.reduce_scatter)
_RESULT, _CONTRIB = int(MsgType.RESULT), int(MsgType.CONTRIB)
_REJOIN = (int(Reason.not_joined), int(Reason.stale_epoch))
OFF_EXP = OFFSET["exp"]


class TreeNode:
    """The parent-facing half of the dataplane (it uses the dataplane's counters and result path)."""

    counters: collections.Counter[str]

    def _result(
        self, job: JobState, k: int, slot: int, count: int, seq: int, exp: int, flags: int = 0
    ) -> list[Output]:
        raise NotImplementedError

    def _emit(self, outs: list[Output]) -> list[Output]:
        raise NotImplementedError

    def _parent_join(self, job: JobState) -> Output:
        c = job.cfg
        pkt = join_packet(
            c.job_id, c.parent_worker, job.parent_incarnation, key=c.parent_key, prev_round=job.parent_prev
        )
        self.counters["parent_joins_sent"] += 1
        return (pkt, [c.parent])

    def _start_parent_round(self, job: JobState, prev_round: int) -> Output:
        """A new round of this switch at its parent, continuing ``prev_round`` there (0: none)."""
        job.parent_incarnation = secrets.randbits(32) or 1
        job.parent_epoch = None
        job.parent_prev = prev_round
        return self._parent_join(job)

    def _up(
        self,
        job: JobState,
        k: int,
        slot: int,
        seq: int,
        count: int,
        *,
        retx: bool,
        flags: int = 0,
        exp: int | None = None,
    ) -> list[Output]:
        """The partial sum of a complete use, as this switch's contribution at the parent (with
        ``flags`` OFFER[|FINAL]: the use's result, offered); before the parent has acknowledged this
        switch's JOIN, the JOIN again."""
        c = job.cfg
        if job.parent_epoch is None:
            return [self._parent_join(job)]
        op = job.op[k]
        if op >> 12 == _RS:  # the owner is a rank of the whole job: the result comes to every switch
            op = (op & 0xFF00) | ROOT_ALL
        if not job.data[k]:  # no payload below this switch (an all-gather chunk owned elsewhere)
            flags |= _EMPTY
        # Positional, in protocol.FIELDS order: the per-packet path of a tree (one partial per use).
        hdr = HEADER.pack(
            VERSION,
            _CONTRIB,
            (_RETX if retx else 0) | flags,
            job.parent_epoch,
            c.job_id,
            c.parent_worker,
            slot,
            count,
            seq,
            job.expmax[k] if exp is None else exp,
            op,
            0,
        )
        self.counters[
            "offers_sent" if flags & _OFFER else "partials_resent" if retx else "partials_sent"
        ] += 1
        if flags & _EMPTY:
            return [(hdr, [c.parent])]
        return [(hdr + job.out_view[k][HEADER_SIZE : HEADER_SIZE + 4 * count], [c.parent])]

    def _resync_up(self, job: JobState) -> list[Output]:
        """After a resumed round at the parent: offer up every result this switch holds, and send up
        again every partial whose result has not come down (the parent lost both)."""
        outs: list[Output] = []
        slot_base = job.cfg.slot_base
        for k, seq in enumerate(job.seq):
            if seq == SEQ_NONE or job.bitmap[k] != job.full:
                continue
            slot = (slot_base + k // 2) | (SET_BIT if k & 1 else 0)
            count = job.nelem[k]
            if job.ready[k] and not job.data[k]:
                continue  # a result without payload (every worker below got the header alone)
            if job.ready[k]:
                stored = job.out_view[k]  # the RESULT kept for repeats: its flags and exponent
                final = stored[OFF_FLAGS] & _FINAL
                exp = int.from_bytes(stored[OFF_EXP : OFF_EXP + 2], "big")
                outs += self._up(job, k, slot, seq, count, retx=False, flags=_OFFER | final, exp=exp)
            else:
                outs += self._up(job, k, slot, seq, count, retx=True)
        return outs

    def _from_parent(
        self,
        job: JobState,
        data: bytes | bytearray | memoryview,
        mtype: int,
        flags: int,
        epoch: int,
        slot: int,
        count: int,
        seq: int,
        exp: int,
        op: int = 0,
    ) -> list[Output]:
        """A JOIN_ACK, PENDING, REFUSE or RESULT from the parent: the RESULT of a use goes down to the
        workers; a refusal that says this switch is not in the parent's round makes it rejoin there."""
        c = job.cfg
        self.counters["from_parent"] += 1
        if mtype == MsgType.JOIN_ACK:
            if seq != job.parent_incarnation:
                return []
            ack = parse_join_ack(data)
            job.parent_epoch = epoch
            job.parent_round = ack["round"] if ack is not None else 0
            if flags & Flag.RESUME:
                return self._emit(self._resync_up(job))
            return []
        if mtype == MsgType.REFUSE:
            if exp in _REJOIN and job.parent_epoch is not None:
                log.info("job %d: the parent refused (%s); rejoining it", c.job_id, Reason(exp).name)
                self.counters["parent_rejoins"] += 1
                return self._emit([self._start_parent_round(job, job.parent_round)])
            return []
        if mtype != _RESULT:
            return []  # PENDING: the workers' retransmissions will make this switch ask again
        i = (slot & (SET_BIT - 1)) - c.slot_base
        k = 2 * i + (1 if slot & SET_BIT else 0)
        if epoch != job.parent_epoch or not 0 <= i < c.slots or (job.ready[k] and job.seq[k] == seq):
            self.counters["parent_stale"] += 1
            return []
        if flags & _FINAL:
            # A result the parent had offered to it: it stands for the use whatever this switch holds
            # of it (docs/protocol.md, "Recovery"), unless this set has moved on to a later use.
            cur = job.seq[k]
            if cur not in (SEQ_NONE, seq) and not 0 < ((seq - cur) & 0xFFFFFFFF) < 0x80000000:
                self.counters["parent_stale"] += 1
                return []
            if cur != seq:
                job.op[k] = op
            job.seq[k], job.nelem[k], job.bitmap[k] = seq, count, job.full
        elif job.seq[k] != seq or job.nelem[k] != count or job.bitmap[k] != job.full:
            self.counters["parent_stale"] += 1
            return []
        job.data[k] = not flags & _EMPTY
        if job.data[k]:
            end = HEADER_SIZE + 4 * count  # the datagram's length (checked in handle)
            job.out_view[k][HEADER_SIZE:end] = data[HEADER_SIZE:end]
        return self._result(job, k, slot, count, seq, exp, flags & _FINAL)
