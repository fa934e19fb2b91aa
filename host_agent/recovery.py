"""What an engine does when the switch refuses it (docs/protocol.md, "Refusals" and "Recovery"):
rejoin, then offer the results it holds and resend what it has in flight, so that the call in flight
completes exactly; or end the call with an error that names the cause. No sockets here: like the rest
of the engine, this takes datagrams and the time and leaves what to send in :attr:`Recovery.outbox`.

The fast paths (:meth:`DatagramEngine.on_datagram`, :meth:`RunEngine.on_run`) hand this module only
what they do not take themselves: REFUSEs, and while rejoining, the JOIN's answers.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from host_agent.errors import JobReformed, NetAggError
from host_agent.join import JoinHandshake, refusal
from host_agent.schedule import Collective, Schedule
from host_agent.session import JobParams, Session, Stats
from netagg.protocol import (
    HEADER,
    HEADER_SIZE,
    OFFSET,
    Flag,
    MsgType,
    Reason,
    pack_header,
    slot_field,
)

__all__ = ["Recovery"]

log = logging.getLogger("host_agent")

#: One thing to send (as in host_agent.engine): the datagram's parts and a GSO segment size (0: none).
Send = tuple[tuple[Any, ...], int]

_REFUSE = int(MsgType.REFUSE)
_REJOIN = (int(Reason.not_joined), int(Reason.stale_epoch))
_OFFER_FLAGS = int(Flag.OFFER | Flag.FINAL)
OFF_EPOCH = OFFSET["epoch"]


class Recovery:
    """The rejoin and the offers, mixed into :class:`host_agent.engine.Engine`."""

    session: Session
    params: JobParams
    stats: Stats
    schedule: Schedule
    call: Collective
    call_name: str
    out: np.ndarray
    is_float: bool
    last_progress: float

    def positions(self) -> tuple[list[int], list[int]]:
        raise NotImplementedError

    def agreed(self) -> np.ndarray:
        raise NotImplementedError

    def base_seq(self, j: int) -> int:
        raise NotImplementedError

    def _resend_all(self, now: float) -> list[Send]:
        """Every use in flight again, with the session's epoch and RETX."""
        raise NotImplementedError

    #: Whether the engine copies each slot's last result into the session as it arrives (the
    #: one-datagram engine: the data is in the cache then), so that :meth:`keep_last` need not.
    kept_as_received = False

    def _init_recovery(self) -> None:
        self.outbox: list[Send] = []
        self.rejoin: JoinHandshake | None = None
        self.rejoin_reason = ""
        self.rejoin_since = 0.0
        self.join_due = math.inf
        self.reoffer_due = 0.0

    # -- what the fast paths hand over ------------------------------------------------------------
    def control(self, buf: Any, nbytes: int, now: float) -> None:
        """A datagram the fast path did not take: a REFUSE, or (rejoining) an answer to the JOIN.
        Raises :class:`host_agent.errors.RefusedError` when the switch refused for a reason that ends
        the call, :class:`JobReformed` when the job started over without this call."""
        if nbytes < HEADER_SIZE:
            self.stats.stale += 1
            return
        _, mtype, _, _, job, worker, _, _, _, reason, _, detail = HEADER.unpack_from(buf)
        if self.rejoin is not None:
            if mtype == _REFUSE and reason in _REJOIN:
                self.stats.stale += 1  # about packets sent before the rejoin began
                return
            params = self.rejoin.on_datagram(buf, nbytes)
            if params is not None:
                self._rejoined(params, now)
            return
        p = self.params
        if mtype != _REFUSE or job != p.job or worker != p.worker_id:
            self.stats.stale += 1
            return
        if reason in _REJOIN:
            if detail != p.epoch:  # it refused a packet of an earlier round: already dealt with
                self.stats.stale += 1
                return
            self._start_rejoin(Reason(reason).name, now)
            return
        s = self.schedule
        context = (
            f" (worker {p.worker_id}: {self.call_name} of {s.total:,} elements, in chunks of {s.elements})"
        )
        raise refusal(
            reason, detail, switch=self.session.switch, job=p.job, worker=p.worker_id, context=context
        )

    def take_outbox(self) -> list[Send]:
        out, self.outbox = self.outbox, []
        return out

    # -- the rejoin -------------------------------------------------------------------------------
    def _start_rejoin(self, reason: str, now: float) -> None:
        p, s = self.params, self.session
        self.rejoin = JoinHandshake(
            p.job, p.worker_id, key=s.key, prev_round=p.round, prev_epoch=p.epoch, switch=s.switch
        )
        self.rejoin_reason, self.rejoin_since = reason, now
        self.stats.rejoins += 1
        log.info("worker %d of job %d: the switch said %s; rejoining", p.worker_id, p.job, reason)
        self.outbox.append(((self.rejoin.packet,), 0))
        self.join_due = now + self.rejoin.next_wait()

    def rejoin_timer(self, now: float) -> list[Send]:
        """The JOIN again, when its wait is over (the use timers wait while rejoining)."""
        assert self.rejoin is not None
        if now < self.join_due:
            return []
        self.join_due = now + self.rejoin.next_wait()
        return [((self.rejoin.packet,), 0)]

    def _rejoined(self, params: JobParams, now: float) -> None:
        old = self.params
        self.rejoin = None
        self.join_due = math.inf
        if not old.same_job(params):
            raise NetAggError(
                f"job {old.job} changed at the switch while worker {old.worker_id} rejoined it "
                f"(was {old.slots} slots of {old.elements} elements for {old.total_workers} workers, now "
                f"{params.slots} of {params.elements} for {params.total_workers})"
            )
        self.session.params = self.params = params
        self.last_progress = now
        if not params.resume:
            # Every member's use numbers start over (the switch's slots did too). The call in flight
            # fails at every worker that has one, whatever its progress: were some to start it
            # again and others not, their later calls would pair up wrongly.
            self.session.seq[:] = 0
            self.session.last_seq[:] = -1
            raise JobReformed(
                f"job {old.job} was re-formed at the switch by a worker that joined afresh (a restarted "
                "process, one whose call failed, or a stray JOIN in a job without a key): the call in "
                "flight cannot complete; the next one can"
            )
        log.info(
            "worker %d of job %d: rejoined (epoch %d), resuming the call",
            old.worker_id,
            old.job,
            params.epoch,
        )
        pos, _ = self.positions()
        need = self.session.seq.copy()  # slots outside this call: their next use
        for j in range(self.schedule.window):
            need[j] = self.base_seq(j) + pos[j]
        for j, seq in enumerate(self.session.last_seq.tolist()):
            if seq < 0 and (j >= self.schedule.window or pos[j] == 0):
                need[j] = -1  # no result of this slot anywhere yet: nothing to offer
        self.session.reoffer = need
        self.outbox += self._offers() + self._resend_all(now)
        self.reoffer_due = now + self.session.rto.value

    # -- offers -----------------------------------------------------------------------------------
    def reoffers(self, now: float) -> list[Send]:
        """With a timer's retransmissions after a resumed round: the offers again (at most once per
        retransmission timeout), since a lost offer leaves the workers without that result waiting."""
        if self.session.reoffer is None or now < self.reoffer_due:
            return []
        self.reoffer_due = now + self.session.rto.value
        return self._offers()

    def _offers(self) -> list[Send]:
        """For each slot of the job, the result of its last completed use, as an OFFER."""
        p, s = self.params, self.schedule
        pos, _ = self.positions()
        sends: list[Send] = []
        for j in range(p.slots):
            in_call = j < s.window and pos[j] > 0
            held = self.offer_of(j, pos[j] - 1) if in_call else self.session.last_offer(j)
            if held is not None:
                pkt = bytearray(held)
                pkt[OFF_EPOCH] = p.epoch
                sends.append(((pkt,), 0))
        self.stats.offers += len(sends)
        return sends

    def contribution(self, j: int, k: int) -> bytes | None:
        """This worker's contribution to use ``k`` of slot ``j`` as sent, if the engine still has it."""
        return None

    def offer_of(self, j: int, k: int) -> bytes | None:
        """The OFFER of use ``k`` of slot ``j`` of this call, from the output (epoch 0: set when sent).
        For a use whose RESULT came without payload (another rank's reduce-scatter chunk): this
        worker's contribution to it again, so that the use can complete anew for its owner."""
        s, p = self.schedule, self.params
        c = s.chunk(j, k)
        if not self.call.receives(c):
            return self.contribution(j, k)
        cnt = s.count(c)
        _, nuses = self.positions()
        exp = 0
        if self.is_float and k + 1 < nuses[j]:
            exp = int(self.agreed()[s.chunk(j, k + 1)])
        seq = (self.base_seq(j) + k) & 0xFFFFFFFF
        payload = b""
        if cnt:
            lo = s.offset(c)
            payload = self.out[lo : lo + cnt].view(np.uint32).astype(">u4").tobytes()
        hdr = pack_header(
            MsgType.CONTRIB,
            flags=_OFFER_FLAGS,
            job=p.job,
            worker=p.worker_id,
            slot=slot_field(p.slot_base + j, seq & 1),
            count=cnt,
            seq=seq,
            exp=exp,
            op=self.call.op(c),
        )
        return hdr + payload

    def keep_last(self) -> None:
        """At the end of a call (after the use numbers advanced): keep each slot's last result, for
        the offers of a resume (the user may change the output once the call returns). The last use
        of each slot carries one of the call's last ``window`` chunks, so this is one copy of the end
        of the output. Slots this call did not use need nothing kept: this call completed, so every
        worker finished the call before it and holds all of its results."""
        s, sess = self.schedule, self.session
        w, n = s.window, s.elements
        first = s.nchunks - w  # the first of the last `window` chunks
        if not self.kept_as_received:
            tail = self.out.view(np.uint32)[first * n :]
            sess.last_vals[: tail.size] = tail
        chunks = first + (np.arange(w) - first) % w  # slot j's last chunk: the one with c % w == j
        sess.last_offset[:w] = (chunks - first) * n
        sess.last_count[:w] = s.counts(chunks)
        sess.last_seq[:w] = (sess.seq[:w] - 1) & 0xFFFFFFFF
        sess.last_seq[w:] = -1
        call = self.call
        sess.last_contribution = [None] * sess.params.slots
        if call.plain:
            sess.last_op[:w] = call.op(0)
        else:
            pos, _ = self.positions()
            for j, c in enumerate(chunks.tolist()):
                sess.last_op[j] = call.op(c)
                if not call.receives(c):  # its RESULT came without payload: the contribution instead
                    sess.last_seq[j] = -1
                    sess.last_contribution[j] = self.contribution(j, pos[j] - 1)
        need = self.session.reoffer
        if need is not None and np.all(
            (need < 0) | (((self.session.seq - 1 - need) & 0xFFFFFFFF) < 0x80000000)
        ):
            self.session.reoffer = None  # every worker holds every result from before the resume
