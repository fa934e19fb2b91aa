"""What the controller knows about its switches and jobs beyond the store: liveness and activity.

A thread checks every registered switch every ``interval`` seconds (its SwitchAgent's GetInfo,
:meth:`SwitchAgents.check`) and reads the counters of those that carry jobs (a GetCounters answered
with UNAVAILABLE, as a BMv2 driver whose simple_switch exited answers, is a failed check too). After
``failures`` failed checks in a row a switch is **down**: placement skips it and its jobs are
``JOB_STATE_SWITCH_DOWN``. When it answers again, or registers again, its jobs are installed there
again and it is up. A job whose workers are all joined but whose switches have counted no packet of it
for ``idle_after`` seconds is **idle** (only switches that count per job, :class:`pb.Counters`
``jobs``, tell; a join counts as activity). All of it lives in memory: a restarted controller starts
with every switch up and every job's clock at its start.

Example::

    monitor = Monitor(store, agents, interval=2.0, failures=3, idle_after=30.0)
    monitor.start()
    monitor.annotate(store.job("j-1a2b3c"))  # its state as the switches tell it
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from controller.agents import SwitchAgents
from controller.store import Store, SwitchRecord
from netagg.v1 import control_pb2 as pb

__all__ = ["Health", "Monitor"]

log = logging.getLogger(__name__)


@dataclass
class Health:
    """One switch's liveness as the controller sees it."""

    up: bool = True
    """False once ``failures`` checks in a row failed, until it answers or registers again."""
    failures: int = 0
    """Checks failed in a row."""
    last_error: str = ""
    """The last failed check's error ("" if none failed since it registered)."""


class Monitor:
    """Health checks, per-job counters and activity over the switches in ``store``."""

    def __init__(
        self,
        store: Store,
        agents: SwitchAgents,
        *,
        interval: float = 2.0,
        failures: int = 3,
        idle_after: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"the health interval must be > 0 seconds, got {interval:g}")
        if failures < 1:
            raise ValueError(f"health failures must be at least 1, got {failures}")
        if not idle_after > 0:
            raise ValueError(f"idle_after must be > 0 seconds, got {idle_after:g}")
        self.store, self.agents = store, agents
        self.interval, self.failures, self.idle_after = interval, failures, idle_after
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, Health] = {}
        self._counters: dict[str, pb.Counters] = {}  # switch id -> its last counters
        self._packets: dict[str, int] = {}  # job id -> packets_in over its switches, last seen
        self._active: dict[str, float] = {}  # job id -> when its packets or joins last moved
        self._counted: set[str] = set()  # job ids some switch counts per job
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = clock()

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        """Check every ``interval`` seconds on a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="netagg-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # a bug must not end the checks for good
                log.exception("health check round failed")

    def tick(self) -> None:
        """One round: check every switch, read the counters of those that carry jobs and are up."""
        jobs = self.store.jobs()
        carried = {p.switch_id for j in jobs for p in j.placements}
        for sw in self.store.switches():
            error = self.agents.check(sw, timeout=max(0.1, min(self.interval, self.agents.timeout)))
            counters = None
            if not error and sw.switch_id in carried:
                read = self.agents.read_counters(sw)
                if not isinstance(read, pb.Counters):
                    log.debug("counters of %s: %s", sw.switch_id, read.details())
                    if read.code() == grpc.StatusCode.UNAVAILABLE:  # BMv2: simple_switch has exited
                        error = f"GetCounters: UNAVAILABLE: {read.details()}"
                else:
                    counters = read
            if error:
                self._failed(sw, error)
                continue
            self._answered(sw)
            with self._lock:
                if counters is None:
                    self._counters.pop(sw.switch_id, None)
                else:
                    self._counters[sw.switch_id] = counters
        self._update_activity(jobs)

    def _failed(self, sw: SwitchRecord, error: str) -> None:
        with self._lock:
            h = self._health.setdefault(sw.switch_id, Health())
            h.failures += 1
            h.last_error = error
            went_down = h.up and h.failures >= self.failures
            if went_down:
                h.up = False
            self._counters.pop(sw.switch_id, None)
        if went_down:
            log.warning(
                "switch %s is down (%d health checks failed in a row): %s", sw.switch_id, h.failures, error
            )

    def _answered(self, sw: SwitchRecord) -> None:
        with self._lock:
            h = self._health.setdefault(sw.switch_id, Health())
            came_back = not h.up
            h.failures = 0
        if came_back:
            # It may have restarted without registering: give it its jobs back before calling it up.
            with self.store.locked():
                self.agents.reinstall(sw)
            with self._lock:
                h.up = True
            log.info("switch %s answers again; its jobs are installed there again", sw.switch_id)

    def registered(self, switch_id: str) -> None:
        """``switch_id`` has (re)registered and got its jobs back: it is up, with no error."""
        with self._lock:
            h = self._health.get(switch_id)
            if h is not None and not h.up:
                log.info("switch %s registered again: up", switch_id)
            self._health[switch_id] = Health()

    def joined(self, job_id: str) -> None:
        """A worker of ``job_id`` joined: the job is active now."""
        with self._lock:
            self._active[job_id] = self._clock()

    # -- what it knows -------------------------------------------------------------------------
    def health(self, switch_id: str) -> Health:
        """A copy of the switch's health (up, no failures, if never checked)."""
        with self._lock:
            h = self._health.get(switch_id, Health())
            return Health(h.up, h.failures, h.last_error)

    def down(self) -> dict[str, str]:
        """The switches that are down, with their last error."""
        with self._lock:
            return {sw: h.last_error for sw, h in self._health.items() if not h.up}

    def counters(self, switch_id: str) -> pb.Counters | None:
        """The switch's counters as last read (None while it is down or never read)."""
        with self._lock:
            c = self._counters.get(switch_id)
            return None if c is None else pb.Counters.FromString(c.SerializeToString())

    def job_counters(self, job: pb.Job) -> list[pb.JobCounters]:
        """The job's counters at each of its switches that counts per job, as last read (job_id and
        switch_id set), in placement order."""
        out = []
        with self._lock:
            for p in job.placements:
                counters = self._counters.get(p.switch_id)
                entry = _entry(counters, job.wire_job_id) if counters is not None else None
                if entry is not None:
                    c = pb.JobCounters()
                    c.CopyFrom(entry)
                    c.job_id, c.switch_id = job.job_id, p.switch_id
                    out.append(c)
        return out

    def _update_activity(self, jobs: list[pb.Job]) -> None:
        now = self._clock()
        with self._lock:
            for job in jobs:
                entries = [
                    e
                    for p in job.placements
                    if (c := self._counters.get(p.switch_id)) is not None
                    and (e := _entry(c, job.wire_job_id)) is not None
                ]
                if not entries:
                    continue
                self._counted.add(job.job_id)
                packets = sum(e.counters.get("packets_in", 0) for e in entries)
                if self._packets.get(job.job_id) != packets:
                    self._packets[job.job_id] = packets
                    self._active[job.job_id] = now
            live = {j.job_id for j in jobs}
            for gone in [j for j in self._active if j not in live]:  # deleted jobs
                self._active.pop(gone, None)
                self._packets.pop(gone, None)
                self._counted.discard(gone)

    def annotate(self, job: pb.Job) -> pb.Job:
        """``job`` (as the store gives it) with its state as the switches tell it: switch down,
        idle, and when it was last active. Changes and returns ``job``."""
        now = self._clock()
        with self._lock:
            health = [(p.switch_id, self._health.get(p.switch_id)) for p in job.placements]
            down = [(sw, h.last_error) for sw, h in health if h is not None and not h.up]
            active = self._active.get(job.job_id, 0.0)
            counted = job.job_id in self._counted
        job.last_active_time = active
        if down:
            job.state = pb.JOB_STATE_SWITCH_DOWN
            job.state_detail = "; ".join(f"switch {sw} is down: {err}" for sw, err in down)
        elif job.state == pb.JOB_STATE_RUNNING and counted:
            quiet = now - max(active, self._started)
            if quiet >= self.idle_after:
                job.state = pb.JOB_STATE_IDLE
                job.state_detail = f"every worker is joined, but no packet for {quiet:.0f} s"
        elif job.state == pb.JOB_STATE_IDLE:
            job.state_detail = "every worker that joined has left"
        return job


def _entry(counters: pb.Counters, wire_job_id: int) -> pb.JobCounters | None:
    return next((e for e in counters.jobs if e.wire_job_id == wire_job_id), None)
