"""The Controller gRPC service (proto/netagg/v1/control.proto): admits jobs, gives each a disjoint range
of switch slots, programs the switches through their SwitchAgent API, and hands workers what they need.

Thin: each RPC reads its request, calls placement (:mod:`controller.placement`, pure), the store
(:mod:`controller.store`), the switch agents (:mod:`controller.agents`) and the monitor
(:mod:`controller.monitor`: which switches are down, which jobs idle), and :func:`answering` turns the
:class:`~controller.errors.ControlError` any of them raises into ``context.abort(code, message)``.

State lives in SQLite, so a restarted controller keeps every job and its key; at start and whenever a
switch registers or answers again it installs the jobs placed there, so a restarted switch gets back
what it carried. Each job gets a random 64-bit key (docs/protocol.md "Job keys") that its switches and
its workers (JoinJob) get and nobody else sees.

Example::

    server, port, service = serve_controller("127.0.0.1:0", Store("jobs.db"), Tokens.single(token))
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator

import grpc
from grpc import StatusCode

from controller.agents import AGENT_TIMEOUT, SwitchAgents
from controller.errors import ControlError
from controller.monitor import Monitor
from controller.placement import free_wire_id, job_shape, leaf_of_rank, place
from controller.store import Store, SwitchRecord
from netagg.protocol import parse_address
from netagg.rpc import Tenant, Tokens, make_server, tenant_of
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc

__all__ = ["ControllerService", "answering", "serve_controller"]

log = logging.getLogger(__name__)

_SWITCH_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_JOB_ID = re.compile(r"j-[0-9a-f]{6,32}")


@contextlib.contextmanager
def answering(context: grpc.ServicerContext) -> Iterator[None]:
    """Answer a :class:`ControlError` raised inside with its status code and message: the one place
    where the controller's RPCs abort."""
    try:
        yield
    except ControlError as exc:
        context.abort(exc.code, str(exc))
        raise  # abort raises; a context that does not still fails the call


def _check_address(text: str, what: str) -> str:
    """``text`` as a HOST:PORT others can reach (IPv6 in brackets); ``INVALID_ARGUMENT``."""
    if not text:
        raise ControlError(StatusCode.INVALID_ARGUMENT, f"{what} is missing (HOST:PORT)")
    try:
        host, port = parse_address(text)
    except ValueError as exc:
        raise ControlError(StatusCode.INVALID_ARGUMENT, f"{what}: {exc}") from None
    if port == 0 or host in ("0.0.0.0", "::", ""):
        raise ControlError(
            StatusCode.INVALID_ARGUMENT,
            f"{what} {text!r} is not an address others can reach (give a host and a port)",
        )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _rank_and_address(job: pb.Job, rank: int, address: str) -> str:
    """A worker's rank checked against ``job`` and its ``HOST:PORT`` checked (JoinJob, LeaveJob):
    the address, or a ControlError (INVALID_ARGUMENT)."""
    if rank >= job.spec.workers:
        raise ControlError(
            StatusCode.INVALID_ARGUMENT,
            f"rank {rank} is outside job {job.job_id}'s ranks 0-{job.spec.workers - 1}",
        )
    return _check_address(address, "address")


def _visible(tenant: Tenant, job: pb.Job) -> bool:
    return tenant.admin or job.owner == tenant.name


def new_key() -> int:
    """A random non-zero 64-bit job key."""
    key = 0
    while not key:
        key = secrets.randbits(64)
    return key


class ControllerService(pb_grpc.ControllerServicer):
    """The Controller service over a :class:`Store`."""

    def __init__(
        self,
        store: Store,
        tokens: Tokens,
        *,
        agent_tls_ca: str | None = None,
        agent_timeout: float = AGENT_TIMEOUT,
        health_interval: float = 2.0,
        health_failures: int = 3,
        idle_after: float = 30.0,
    ) -> None:
        """``health_interval``, ``health_failures``, ``idle_after``: see :class:`Monitor` (its thread
        starts with :meth:`Monitor.start`, which :func:`serve_controller` calls)."""
        self.store = store
        self.tokens = tokens
        self.agent_tls_ca = agent_tls_ca
        self.agent_timeout = agent_timeout
        self.agents = SwitchAgents(store, tls_ca=agent_tls_ca, timeout=agent_timeout)
        self.monitor = Monitor(
            store, self.agents, interval=health_interval, failures=health_failures, idle_after=idle_after
        )

    def close(self) -> None:
        """Stop the health checks and close the channels to the switch agents."""
        self.monitor.stop()
        self.agents.close()

    def jobs(self, job_ids: list[str] | None = None) -> list[pb.Job]:
        """The stored jobs (all, or those named) with their state as the switches tell it."""
        return [self.monitor.annotate(j) for j in self.store.jobs(job_ids)]

    def _job_for(self, job_id: str, tenant: Tenant) -> pb.Job:
        """The job ``job_id`` if ``tenant`` may see it."""
        if not job_id:
            raise ControlError(StatusCode.INVALID_ARGUMENT, "job_id is missing")
        if not _JOB_ID.fullmatch(job_id):
            raise ControlError(
                StatusCode.INVALID_ARGUMENT, f"job_id {job_id[:80]!r} is not a job id (j-xxxxxx)"
            )
        found = self.jobs([job_id])
        if not found:
            raise ControlError(StatusCode.NOT_FOUND, f"no job {job_id} (ListJobs shows the jobs there are)")
        job = found[0]
        if not _visible(tenant, job):
            raise ControlError(
                StatusCode.PERMISSION_DENIED,
                f"job {job_id} belongs to tenant {job.owner!r}; this token is tenant {tenant.name!r}'s",
            )
        return job

    # -- RPCs ----------------------------------------------------------------------------------
    def CreateJob(self, request: pb.CreateJobRequest, context: grpc.ServicerContext) -> pb.Job:
        tenant = tenant_of(context, self.tokens)
        with answering(context):
            if not request.HasField("spec"):
                raise ControlError(StatusCode.INVALID_ARGUMENT, "spec is missing")
            with self.store.locked():  # one admission at a time: no two jobs get the same slots
                switches = self.store.switches()
                used = {s.switch_id: self.store.used_ranges(s.switch_id) for s in switches}
                placement = place(request.spec, switches, used, self.monitor.down())
                spec = placement.spec
                job = pb.Job(
                    job_id=f"j-{secrets.token_hex(4)}",
                    wire_job_id=free_wire_id(self.store.wire_ids()),
                    spec=spec,
                    state=pb.JOB_STATE_PENDING,
                    create_time=time.time(),
                    owner=tenant.name,
                )
                for sw, parent in placement.switches:
                    job.placements.add(
                        switch_id=sw.switch_id,
                        slot_base=placement.slot_base,
                        slots=spec.slots,
                        parent_switch_id=parent,
                    )
                key = new_key()
                self.agents.install_all(placement.switches, job, key)
                self.store.add_job(job, key)
                self.agents.pin_inner(placement.switches, job)
        log.info(
            "job %s (wire %d, %s): %d workers, slots [%d, %d) on %s",
            job.job_id,
            job.wire_job_id,
            spec.name,
            spec.workers,
            placement.slot_base,
            placement.slot_base + spec.slots,
            ", ".join(p.switch_id for p in job.placements),
        )
        return job

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        tenant = tenant_of(context, self.tokens)
        with answering(context):
            return self._job_for(request.job_id, tenant)

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        tenant = tenant_of(context, self.tokens)
        return pb.ListJobsResponse(jobs=[j for j in self.jobs() if _visible(tenant, j)])

    def DeleteJob(self, request: pb.DeleteJobRequest, context: grpc.ServicerContext) -> pb.DeleteJobResponse:
        tenant = tenant_of(context, self.tokens)
        with answering(context), self.store.locked():
            job = self._job_for(request.job_id, tenant)
            if job.state == pb.JOB_STATE_RUNNING and not request.force:
                ago = time.time() - job.last_active_time if job.last_active_time else None
                when = f", active {ago:.0f} s ago" if ago is not None else ""
                raise ControlError(
                    StatusCode.FAILED_PRECONDITION,
                    f"job {job.job_id} is running: all {job.spec.workers} workers are joined{when}; "
                    "stop them first, or delete it anyway with force (netagg ctl delete --force)",
                )
            self.agents.remove(job)
            self.store.delete_job(job.job_id)
        forced = job.state == pb.JOB_STATE_RUNNING
        log.info("job %s deleted%s", job.job_id, " while it was running (force)" if forced else "")
        return pb.DeleteJobResponse()

    def JoinJob(self, request: pb.JoinJobRequest, context: grpc.ServicerContext) -> pb.JoinJobResponse:
        tenant = tenant_of(context, self.tokens)
        with answering(context):
            job = self._job_for(request.job_id, tenant)
            address = _rank_and_address(job, request.rank, request.address)
            with self.store.locked():
                member = self.store.member(job.job_id, request.rank)
                taken = member is not None and not member.left and member.address != address
                if member is not None and taken and not request.replace:
                    raise ControlError(
                        StatusCode.ALREADY_EXISTS,
                        f"rank {request.rank} of job {job.job_id} has joined from {member.address}; "
                        "is another worker using this rank? (a restarted worker passes replace=true)",
                    )
                self.store.put_member(job.job_id, request.rank, address)
                shape = job_shape(job)
                leaf = leaf_of_rank(shape, request.rank)
                placement = next(p for p in job.placements if p.switch_id == leaf)
                sw = self.store.switch(placement.switch_id)
                if sw is None:
                    raise ControlError(
                        StatusCode.UNAVAILABLE, f"switch {placement.switch_id} of the job is gone"
                    )
                self.agents.pin_workers(sw, job.job_id)
                key = self.store.job_key(job.job_id)
        self.monitor.joined(job.job_id)
        log.info("job %s: rank %d joined from %s", job.job_id, request.rank, address)
        return pb.JoinJobResponse(
            switch_address=sw.data_address,
            wire_job_id=job.wire_job_id,
            worker_id=request.rank - shape[leaf].first_rank,
            slot_base=placement.slot_base,
            slots=placement.slots,
            elements_per_packet=job.spec.elements_per_packet,
            total_workers=job.spec.workers,
            key=key,
            worker_address=address,
        )

    def LeaveJob(self, request: pb.LeaveJobRequest, context: grpc.ServicerContext) -> pb.LeaveJobResponse:
        tenant = tenant_of(context, self.tokens)
        with answering(context):
            job = self._job_for(request.job_id, tenant)
            address = _rank_and_address(job, request.rank, request.address)
            left = self.store.leave_member(job.job_id, request.rank, address)
        if left:
            log.info("job %s: rank %d (%s) left", job.job_id, request.rank, address)
        else:
            log.info(
                "job %s: rank %d is not joined from %s; nothing to leave", job.job_id, request.rank, address
            )
        return pb.LeaveJobResponse(left=left)

    def RegisterSwitch(self, request: pb.RegisterSwitchRequest, context: grpc.ServicerContext) -> pb.Switch:
        tenant = tenant_of(context, self.tokens)
        with answering(context):
            rec = self._switch_record(request, tenant, context)
            with self.store.locked():
                self.store.put_switch(rec, time.time())
                self.agents.reinstall(rec)
                self.monitor.registered(rec.switch_id)
        log.info(
            "switch %s registered: data %s, agent %s, %d slots",
            rec.switch_id,
            rec.data_address,
            rec.agent_address,
            rec.info.total_slots,
        )
        return self._switch_message(rec)

    def _switch_record(
        self, request: pb.RegisterSwitchRequest, tenant: Tenant, context: grpc.ServicerContext
    ) -> SwitchRecord:
        """The checked record of a registering switch, with the info its SwitchAgent reports."""
        if not tenant.admin:
            raise ControlError(StatusCode.PERMISSION_DENIED, "only an admin token may register switches")
        if not _SWITCH_ID.fullmatch(request.switch_id):
            raise ControlError(
                StatusCode.INVALID_ARGUMENT,
                f"switch_id {request.switch_id[:80]!r} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
            )
        data = _check_address(request.data_address, "data_address")
        agent_addr = _check_address(request.agent_address, "agent_address")
        token = next(v for k, v in context.invocation_metadata() if k == "authorization").split(" ", 1)[1]
        info = self.agents.info(SwitchRecord(request.switch_id, data, agent_addr, pb.SwitchInfo(), token))
        if request.HasField("info") and request.info != info:
            raise ControlError(
                StatusCode.INVALID_ARGUMENT,
                f"info disagrees with what the SwitchAgent at {agent_addr} reports ({info})",
            )
        if info.total_slots < 1 or info.max_workers < 1 or info.min_elements_per_packet < 1:
            raise ControlError(StatusCode.INVALID_ARGUMENT, f"the switch reports no capacity: {info}")
        if request.parent_switch_id and not _SWITCH_ID.fullmatch(request.parent_switch_id):
            raise ControlError(
                StatusCode.INVALID_ARGUMENT,
                f"parent_switch_id {request.parent_switch_id[:80]!r} is not a switch id",
            )
        if request.parent_switch_id == request.switch_id:
            raise ControlError(StatusCode.INVALID_ARGUMENT, "a switch cannot be its own parent")
        return SwitchRecord(request.switch_id, data, agent_addr, info, token, request.parent_switch_id)

    def ListSwitches(
        self, request: pb.ListSwitchesRequest, context: grpc.ServicerContext
    ) -> pb.ListSwitchesResponse:
        tenant_of(context, self.tokens)
        return pb.ListSwitchesResponse(switches=[self._switch_message(s) for s in self.store.switches()])

    def StreamStats(
        self, request: pb.StreamStatsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StatsSnapshot]:
        tenant = tenant_of(context, self.tokens)
        interval = request.interval_seconds or 1.0
        with answering(context):
            if not 0.1 <= interval <= 3600:
                raise ControlError(
                    StatusCode.INVALID_ARGUMENT, f"interval_seconds must be 0.1-3600, got {interval:g}"
                )
            for job_id in request.job_ids:
                self._job_for(job_id, tenant)
        wake = threading.Event()
        context.add_callback(wake.set)
        while context.is_active():
            jobs = [j for j in self.jobs(list(request.job_ids) or None) if _visible(tenant, j)]
            snap = pb.StatsSnapshot(time=time.time(), jobs=jobs)
            for sw_id in sorted({p.switch_id for j in jobs for p in j.placements}):
                sw = self.store.switch(sw_id)
                if sw is None:
                    continue
                entry = snap.switch_counters[sw_id]  # listed (empty) even if the switch does not answer
                counters = self.agents.counters(sw, quiet=not self.monitor.health(sw_id).up)
                if counters is not None:
                    entry.CopyFrom(counters)
            for job in jobs:
                for p in job.placements:
                    if p.switch_id not in snap.switch_counters:
                        continue
                    for e in snap.switch_counters[p.switch_id].jobs:
                        if e.wire_job_id == job.wire_job_id:
                            c = snap.job_counters.add()
                            c.CopyFrom(e)
                            c.job_id, c.switch_id = job.job_id, p.switch_id
            yield snap
            if wake.wait(interval):
                return

    # -- reconciliation ------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Put every stored job back on its switches (after a controller restart)."""
        for sw in self.store.switches():
            with self.store.locked():
                self.agents.reinstall(sw)

    def _switch_message(self, sw: SwitchRecord) -> pb.Switch:
        ranges = self.store.used_ranges(sw.switch_id)
        used = sum(hi - lo for lo, hi in ranges)
        health = self.monitor.health(sw.switch_id)
        return pb.Switch(
            state=pb.SWITCH_STATE_UP if health.up else pb.SWITCH_STATE_DOWN,
            last_error=health.last_error,
            health_failures=health.failures,
            jobs=len(ranges),
            switch_id=sw.switch_id,
            data_address=sw.data_address,
            agent_address=sw.agent_address,
            info=sw.info,
            free_slots=max(0, sw.info.total_slots - used),
            parent_switch_id=sw.parent,
        )


def serve_controller(
    address: str,
    store: Store,
    tokens: Tokens,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    agent_tls_ca: str | None = None,
    health_interval: float = 2.0,
    health_failures: int = 3,
    idle_after: float = 30.0,
) -> tuple[grpc.Server, int, ControllerService]:
    """Start the controller on ``address`` (port 0 picks one); returns (server, port, servicer).

    Jobs stored from an earlier run are installed again on their switches in the background; the
    health checks (:class:`Monitor`) run every ``health_interval`` seconds until ``service.close()``.
    """
    service = ControllerService(
        store,
        tokens,
        agent_tls_ca=agent_tls_ca,
        health_interval=health_interval,
        health_failures=health_failures,
        idle_after=idle_after,
    )
    server, port, _ = make_server(
        address,
        tokens,
        [lambda s: pb_grpc.add_ControllerServicer_to_server(service, s)],
        [pb.DESCRIPTOR.services_by_name["Controller"].full_name],
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    threading.Thread(target=service.reconcile, name="netagg-reconcile", daemon=True).start()
    service.monitor.start()
    return server, port, service
