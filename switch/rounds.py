"""The JOIN barrier (docs/protocol.md, "Joining"): members, incarnations, keys, expiry, and the round
that completes when every worker is a member, with its name (lineage), RESUME and epoch. Mixed into
:class:`switch.core.Dataplane`; no sockets here."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

from netagg.protocol import Reason, parse_join
from switch.jobs import Address, JobState, Output

__all__ = ["Rounds"]

log = logging.getLogger("netagg.switch")


class Rounds:
    """JOIN handling, mixed into the dataplane (it uses the dataplane's counters, drops and refusals)."""

    counters: collections.Counter[str]
    join_refresh: float
    _clock: Callable[[], float]
    # The dataplane's (switch.core.Dataplane) and the tree's (switch.tree.TreeNode):
    _drop: Callable[..., list[Output]]
    _emit: Callable[[list[Output]], list[Output]]
    _refuse: Callable[..., list[Output]]
    _start_parent_round: Callable[[JobState, int], Output]

    def _join(
        self,
        job: JobState,
        data: bytes | bytearray | memoryview,
        src: Address,
        worker: int,
        slot: int,
        incarnation: int,
        prev_epoch: int,
    ) -> list[Output]:
        cfg = job.cfg
        joined = parse_join(data)
        if joined is None:
            return self._drop("bad_length", job)
        if incarnation == 0:
            return self._drop("bad_incarnation", job)
        key, prev_round = joined
        if cfg.key and key != cfg.key:
            self._drop("bad_key", job)
            return self._refuse(job, Reason.bad_key, src, cfg.job_id, worker, slot, incarnation)
        if cfg.addresses is not None and src != cfg.addresses[worker]:
            self._drop("wrong_source", job)
            return self._refuse(job, Reason.wrong_source, src, cfg.job_id, worker, slot, incarnation)
        self.counters["joins"] += 1
        job.counters["joins"] += 1
        now = self._clock()
        if job.incarnation[worker] == incarnation:  # a repeat of a JOIN we have: the member is alive
            job.join_time[worker] = now
            job.repeated[worker] = True
            if job.joined:
                return self._emit([(job.join_ack(worker), [src])])
            if all(job.incarnation):  # a mixed round that waited for this repeat
                return self._complete(job, worker, incarnation, src)
            return self._emit([(job.pending_join(worker, incarnation), [src])])
        if job.joined:  # a new incarnation after a complete round: a new round begins
            log.info("job %d: worker %d joins afresh from %s: a new round begins", cfg.job_id, worker, src)
            job.joined = False
            job.incarnation = [0] * cfg.workers
            if cfg.addresses is None:
                job.addrs = [None] * cfg.workers
        else:
            log.info("job %d: worker %d joins from %s", cfg.job_id, worker, src)
        job.incarnation[worker] = incarnation
        job.prev_round[worker] = prev_round
        job.prev_epoch[worker] = prev_epoch
        job.repeated[worker] = False
        job.join_time[worker] = now
        if cfg.addresses is None:
            job.addrs[worker] = src
        for w in range(cfg.workers):  # members that stopped refreshing their JOIN are gone
            if job.incarnation[w] and now - job.join_time[w] > self.join_refresh:
                job.incarnation[w] = 0
                self.counters["join_expired"] += 1
        if not all(job.incarnation):
            return self._emit([(job.pending_join(worker, incarnation), [src])])
        return self._complete(job, worker, incarnation, src)

    def _complete(self, job: JobState, worker: int, incarnation: int, src: Address) -> list[Output]:
        """Every worker is a member: the round completes, unless the members disagree on the round
        they continue and one of them has not repeated its JOIN (a stray, forged or dead member cannot
        break the others' lineage; a live new member, a restarted worker, keeps repeating its JOIN)."""
        cfg = job.cfg
        first = job.prev_round[0]
        mixed = any(p != first for p in job.prev_round)
        if mixed and not all(job.repeated):
            return self._emit([(job.pending_join(worker, incarnation), [src])])
        job.joined = True
        job.resume = first != 0 and not mixed
        if job.resume:  # the round continues the members' lineage: it keeps its name
            job.round = first
        else:
            job.round = 0
            for inc in job.incarnation:
                job.round ^= inc
        # The next epoch after the latest one this switch or any member has seen (a restarted switch
        # counts from 0 again): late packets of the members' earlier rounds stay stale. Never 0.
        latest = job.epoch
        for e in job.prev_epoch:
            if e and 0 < ((e - latest) & 0xFF) < 0x80:
                latest = e
        job.epoch = latest % 0xFF + 1
        job.reset_slots()
        job.result_dests = [cfg.multicast] if cfg.multicast else list(job.addrs)
        self.counters["epochs"] += 1
        job.counters["epochs"] += 1
        log.info(
            "job %d: round complete, epoch %d (%s), %d workers",
            cfg.job_id,
            job.epoch,
            "resumes the previous round" if job.resume else "a fresh start",
            cfg.workers,
        )
        outs: list[Output] = [(job.join_ack(w), [job.addrs[w]]) for w in range(cfg.workers)]
        if cfg.parent is not None:  # a new round here is a new round of this switch at its parent
            outs.append(self._start_parent_round(job, job.parent_round if job.resume else 0))
        return self._emit(outs)
