"""The netagg controller: admits jobs, gives each a disjoint range of switch slots, programs the switches
through their SwitchAgent API, and hands workers what they need (proto/netagg/v1/control.proto).

State lives in SQLite (:mod:`netagg.store`), so a restarted controller keeps every job; at start and
whenever a switch registers (again) it installs the jobs placed there, so a restarted switch gets back
what it carried. Placement is single-switch for now: the switch with the most free slots among those
that take the job's workers and packet size, first-fit within it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import grpc

from netagg.protocol import MAX_ELEMENTS, MAX_SLOTS, MAX_WINDOW_ELEMENTS, parse_address
from netagg.rpc import Tenant, Tokens, make_server, tenant_of
from netagg.rpc import channel as rpc_channel
from netagg.store import Store, SwitchRecord
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc

__all__ = [
    "MAX_JOB_WORKERS",
    "ControllerService",
    "default_slots",
    "serve_controller",
]

log = logging.getLogger(__name__)

MAX_JOB_WORKERS = 1024
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SWITCH_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_JOB_ID = re.compile(r"j-[0-9a-f]{6,32}")
_AGENT_TIMEOUT = 5.0


def default_slots(elements: int) -> int:
    """Slots a job gets when it asks for none: a window of ~1 MiB of int32, 16 to 1024 packets."""
    return max(16, min(1024, (1 << 18) // elements))


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises


def _check_address(context: grpc.ServicerContext, text: str, what: str) -> str:
    if not text:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{what} is missing (HOST:PORT)")
    try:
        host, port = parse_address(text)
    except ValueError as exc:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {exc}")
    if port == 0 or host in ("0.0.0.0", "::", ""):
        _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what} {text!r} is not an address others can reach (give a host and a port)",
        )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ControllerService(pb_grpc.ControllerServicer):
    """The Controller service over a :class:`Store`."""

    def __init__(
        self,
        store: Store,
        tokens: Tokens,
        *,
        agent_tls_ca: str | None = None,
        agent_timeout: float = _AGENT_TIMEOUT,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.agent_tls_ca = agent_tls_ca
        self.agent_timeout = agent_timeout
        self._stubs: dict[tuple[str, str], tuple[grpc.Channel, pb_grpc.SwitchAgentStub]] = {}
        self._stubs_lock = threading.Lock()

    def close(self) -> None:
        with self._stubs_lock:
            for ch, _ in self._stubs.values():
                ch.close()
            self._stubs.clear()

    # -- helpers -------------------------------------------------------------------------------
    def _agent(self, sw: SwitchRecord) -> pb_grpc.SwitchAgentStub:
        key = (sw.agent_address, sw.agent_token)
        with self._stubs_lock:
            if key not in self._stubs:
                ch = rpc_channel(sw.agent_address, sw.agent_token, tls_ca=self.agent_tls_ca)
                self._stubs[key] = (ch, pb_grpc.SwitchAgentStub(ch))
            return self._stubs[key][1]

    def _install(self, sw: SwitchRecord, job: pb.Job, placement: pb.Placement) -> None:
        """Install ``job``'s part on ``sw``; raises grpc.RpcError (ALREADY_EXISTS if it is there)."""
        node = _shape(job)[sw.switch_id]
        parent = self.store.switch(node.parent) if node.parent else None
        self._agent(sw).InstallJob(
            pb.InstallJobRequest(
                wire_job_id=job.wire_job_id,
                workers=node.workers,
                total_workers=job.spec.workers,
                slot_base=placement.slot_base,
                slots=placement.slots,
                elements_per_packet=job.spec.elements_per_packet,
                parent_address=parent.data_address if parent is not None else "",
                parent_worker_id=node.parent_worker,
            ),
            timeout=self.agent_timeout,
        )

    def _job_for(self, context: grpc.ServicerContext, job_id: str, tenant: Tenant) -> pb.Job:
        if not job_id:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "job_id is missing")
        if not _JOB_ID.fullmatch(job_id):
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"job_id {job_id[:80]!r} is not a job id (j-xxxxxx)",
            )
        job = self.store.job(job_id)
        if job is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no job {job_id} (ListJobs shows the jobs there are)")
        if not (tenant.admin or job.owner == tenant.name):
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"job {job_id} belongs to tenant {job.owner!r}; this token is tenant {tenant.name!r}'s",
            )
        return job

    def _visible(self, tenant: Tenant, job: pb.Job) -> bool:
        return tenant.admin or job.owner == tenant.name

    def _validate_spec(self, context: grpc.ServicerContext, spec: pb.JobSpec) -> None:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if not spec.name:
            _abort(context, bad, "spec.name is missing (1-64 characters of A-Z a-z 0-9 . _ -)")
        if not _NAME.fullmatch(spec.name):
            _abort(context, bad, f"spec.name {spec.name[:80]!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
        if not 1 <= spec.workers <= MAX_JOB_WORKERS:
            _abort(context, bad, f"spec.workers must be 1-{MAX_JOB_WORKERS}, got {spec.workers}")
        if spec.element_type not in (pb.ELEMENT_TYPE_INT32, pb.ELEMENT_TYPE_FLOAT32):
            _abort(context, bad, "spec.element_type must be ELEMENT_TYPE_INT32 or ELEMENT_TYPE_FLOAT32")
        if spec.elements_per_packet > MAX_ELEMENTS:
            _abort(
                context,
                bad,
                f"spec.elements_per_packet must be 1-{MAX_ELEMENTS} (what fits a UDP datagram), "
                f"or 0 for the switch's default; got {spec.elements_per_packet}",
            )
        if spec.slots > MAX_SLOTS:
            _abort(context, bad, f"spec.slots must be 1-{MAX_SLOTS}, or 0 for the default; got {spec.slots}")
        if (
            spec.slots
            and spec.elements_per_packet
            and spec.slots * spec.elements_per_packet > MAX_WINDOW_ELEMENTS
        ):
            _abort(
                context,
                bad,
                f"spec.slots x spec.elements_per_packet = {spec.slots * spec.elements_per_packet} exceeds "
                f"{MAX_WINDOW_ELEMENTS} (a 64 MiB window); ask for fewer slots",
            )

    def _place(self, context: grpc.ServicerContext, spec: pb.JobSpec) -> tuple[SwitchRecord, pb.JobSpec, int]:
        """Pick a switch and a free slot range; returns (switch, spec with defaults, slot_base)."""
        switches = self.store.switches()
        if not switches:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "no switch is registered (start one with `netagg switch --controller HOST:PORT ...`)",
            )
        fits, free_report = [], []
        for sw in switches:
            info = sw.info
            n = spec.elements_per_packet or info.max_elements_per_packet
            if spec.workers > info.max_workers:
                free_report.append(f"{sw.switch_id} takes at most {info.max_workers} workers")
                continue
            if not info.min_elements_per_packet <= n <= info.max_elements_per_packet:
                free_report.append(
                    f"{sw.switch_id} takes {info.min_elements_per_packet}-{info.max_elements_per_packet} "
                    "elements per packet"
                )
                continue
            slots = spec.slots or min(default_slots(n), MAX_WINDOW_ELEMENTS // n)
            if slots * n > MAX_WINDOW_ELEMENTS:
                free_report.append(f"{sw.switch_id}: {slots} slots of {n} elements exceed the 64 MiB window")
                continue
            gaps = _free_gaps(self.store.used_ranges(sw.switch_id), info.total_slots)
            free = sum(hi - lo for lo, hi in gaps)
            largest = max((hi - lo for lo, hi in gaps), default=0)
            free_report.append(f"{sw.switch_id} has {free} free (largest free range {largest})")
            base = next((lo for lo, hi in gaps if hi - lo >= slots), None)
            if base is not None:
                fits.append((free, sw, n, slots, base))
        if not fits:
            capable = [r for r in free_report if " free " in r]
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if capable else grpc.StatusCode.FAILED_PRECONDITION
            want = f"{spec.slots} slots" if spec.slots else "its default slots"
            _abort(
                context,
                code,
                f"no switch can take a job of {spec.workers} workers and {want} now: "
                + "; ".join(free_report),
            )
        fits.sort(key=lambda f: -f[0])  # most free slots first: spreads jobs over switches
        _, sw, n, slots, base = fits[0]
        full = pb.JobSpec()
        full.CopyFrom(spec)
        full.elements_per_packet, full.slots = n, slots
        return sw, full, base

    def _place_tree(
        self, context: grpc.ServicerContext, spec: pb.JobSpec
    ) -> tuple[list[tuple[SwitchRecord, str]], pb.JobSpec, int]:
        """Place a job spread over several switches as a tree through their common ancestor; returns
        ([(switch, parent id)], spec with defaults, slot_base)."""
        switches = {s.switch_id: s for s in self.store.switches()}
        bad = grpc.StatusCode.INVALID_ARGUMENT
        for leaf, n in spec.workers_at.items():
            if leaf not in switches:
                _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"spec.workers_at: switch {leaf!r} is not registered",
                )
            if n < 1:
                _abort(context, bad, f"spec.workers_at[{leaf!r}] must be at least 1, got {n}")
        if sum(spec.workers_at.values()) != spec.workers:
            _abort(
                context,
                bad,
                f"spec.workers_at adds up to {sum(spec.workers_at.values())}, "
                f"not spec.workers = {spec.workers}",
            )
        paths = {}
        for leaf in spec.workers_at:
            path, at = [leaf], switches[leaf].parent
            while at:
                if at in path or at not in switches:
                    _abort(
                        context,
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"switch {path[-1]}'s parent {at!r} is not registered (or the parents loop)",
                    )
                path.append(at)
                at = switches[at].parent
            paths[leaf] = path
        first = paths[min(paths)]
        root = next((n for n in first if all(n in p for p in paths.values())), None)
        if root is None:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"switches {sorted(paths)} have no common ancestor (see ListSwitches' parent_switch_id)",
            )
        tree: dict[str, str] = {}
        for path in paths.values():
            for node, parent in zip(path, [*path[1:], ""], strict=True):
                tree[node] = "" if node == root else parent
                if node == root:
                    break
        n = spec.elements_per_packet or min(switches[sw].info.max_elements_per_packet for sw in tree)
        slots = spec.slots or min(default_slots(n), MAX_WINDOW_ELEMENTS // n)
        for sw, parent in tree.items():
            info = switches[sw].info
            children = spec.workers_at.get(sw, 0) + sum(1 for p in tree.values() if p == sw)
            if children > info.max_workers:
                _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"switch {sw} would have {children} children; it takes at most {info.max_workers}",
                )
            if not info.min_elements_per_packet <= n <= info.max_elements_per_packet:
                _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"switch {sw} takes {info.min_elements_per_packet}-{info.max_elements_per_packet} "
                    f"elements per packet, not {n}",
                )
            if parent and info.kind != "python":
                _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"switch {sw} ({info.kind}) cannot forward to a parent; only Python switches can be "
                    "inner nodes of a tree yet",
                )
        used = [r for sw in tree for r in self.store.used_ranges(sw)]
        total = min(switches[sw].info.total_slots for sw in tree)
        base = next((lo for lo, hi in _free_gaps(used, total) if hi - lo >= slots), None)
        if base is None:
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"no range of {slots} slots is free on all of {sorted(tree)} at once",
            )
        full = pb.JobSpec()
        full.CopyFrom(spec)
        full.elements_per_packet, full.slots = n, slots
        order = sorted(tree, key=lambda sw: tree[sw] != "")  # the root first
        return [(switches[sw], tree[sw]) for sw in order], full, base

    # -- RPCs ----------------------------------------------------------------------------------
    def CreateJob(self, request: pb.CreateJobRequest, context: grpc.ServicerContext) -> pb.Job:
        tenant = tenant_of(context, self.tokens)
        if not request.HasField("spec"):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "spec is missing")
        self._validate_spec(context, request.spec)
        with self.store.locked():  # one admission at a time: no two jobs get the same slots
            if request.spec.workers_at:
                nodes, spec, base = self._place_tree(context, request.spec)
            else:
                sw, spec, base = self._place(context, request.spec)
                nodes = [(sw, "")]
            used = self.store.wire_ids()
            wire = next((i for i in range(1, 0x10000) if i not in used), None)
            if wire is None:
                _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "all 65535 wire job ids are in use")
            job = pb.Job(
                job_id=f"j-{secrets.token_hex(4)}",
                wire_job_id=wire,
                spec=spec,
                state=pb.JOB_STATE_PENDING,
                create_time=time.time(),
                owner=tenant.name,
            )
            for sw, parent in nodes:
                job.placements.add(
                    switch_id=sw.switch_id, slot_base=base, slots=spec.slots, parent_switch_id=parent
                )
            installed: list[SwitchRecord] = []
            for (sw, _), placement in zip(nodes, job.placements, strict=True):
                try:
                    self._install(sw, job, placement)
                    installed.append(sw)
                except grpc.RpcError as exc:
                    for done in installed:  # all or nothing
                        with contextlib.suppress(grpc.RpcError):
                            self._agent(done).RemoveJob(
                                pb.RemoveJobRequest(wire_job_id=wire), timeout=self.agent_timeout
                            )
                    _abort(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        f"switch {sw.switch_id} ({sw.agent_address}) could not be programmed: "
                        f"{exc.code().name}: {exc.details()}",
                    )
            self.store.add_job(job)
            shape = _shape(job)
            for sw, _ in nodes:  # switches with only switches below can be pinned right away
                if shape[sw.switch_id].hosts == 0:
                    try:
                        self._pin_workers(sw, job.job_id)
                    except grpc.RpcError as exc:
                        log.warning(
                            "job %s: pinning children on %s: %s", job.job_id, sw.switch_id, exc.details()
                        )
        log.info(
            "job %s (wire %d, %s): %d workers, slots [%d, %d) on %s",
            job.job_id,
            wire,
            spec.name,
            spec.workers,
            base,
            base + spec.slots,
            ", ".join(p.switch_id for p in job.placements),
        )
        return job

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return self._job_for(context, request.job_id, tenant_of(context, self.tokens))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        tenant = tenant_of(context, self.tokens)
        return pb.ListJobsResponse(jobs=[j for j in self.store.jobs() if self._visible(tenant, j)])

    def DeleteJob(self, request: pb.DeleteJobRequest, context: grpc.ServicerContext) -> pb.DeleteJobResponse:
        tenant = tenant_of(context, self.tokens)
        with self.store.locked():
            job = self._job_for(context, request.job_id, tenant)
            for p in job.placements:
                sw = self.store.switch(p.switch_id)
                if sw is None:
                    continue
                try:
                    self._agent(sw).RemoveJob(
                        pb.RemoveJobRequest(wire_job_id=job.wire_job_id), timeout=self.agent_timeout
                    )
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        # Its slots are freed anyway: a switch that comes back gets only live jobs.
                        log.warning(
                            "job %s: removing it from %s failed: %s", job.job_id, sw.switch_id, exc.details()
                        )
            self.store.delete_job(job.job_id)
        log.info("job %s deleted", job.job_id)
        return pb.DeleteJobResponse()

    def JoinJob(self, request: pb.JoinJobRequest, context: grpc.ServicerContext) -> pb.JoinJobResponse:
        tenant = tenant_of(context, self.tokens)
        job = self._job_for(context, request.job_id, tenant)
        if request.rank >= job.spec.workers:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"rank {request.rank} is outside job {job.job_id}'s ranks 0-{job.spec.workers - 1}",
            )
        address = _check_address(context, request.address, "address")
        with self.store.locked():
            member = self.store.member(job.job_id, request.rank)
            if member is not None and member.address != address and not request.replace:
                _abort(
                    context,
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"rank {request.rank} of job {job.job_id} has joined from {member.address}; "
                    "is another worker using this rank? (a restarted worker passes replace=true)",
                )
            self.store.put_member(job.job_id, request.rank, address)
            shape = _shape(job)
            leaf = next(
                sw
                for sw, node in shape.items()
                if node.first_rank <= request.rank < node.first_rank + node.hosts
            )
            placement = next(p for p in job.placements if p.switch_id == leaf)
            sw = self.store.switch(placement.switch_id)
            if sw is None:
                _abort(
                    context, grpc.StatusCode.UNAVAILABLE, f"switch {placement.switch_id} of the job is gone"
                )
            try:
                self._pin_workers(sw, job.job_id)
            except grpc.RpcError as exc:
                _abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"switch {sw.switch_id} could not take the workers' addresses: "
                    f"{exc.code().name}: {exc.details()}",
                )
        return pb.JoinJobResponse(
            switch_address=sw.data_address,
            wire_job_id=job.wire_job_id,
            worker_id=request.rank - shape[leaf].first_rank,
            slot_base=placement.slot_base,
            slots=placement.slots,
            elements_per_packet=job.spec.elements_per_packet,
            total_workers=job.spec.workers,
        )

    def RegisterSwitch(self, request: pb.RegisterSwitchRequest, context: grpc.ServicerContext) -> pb.Switch:
        tenant = tenant_of(context, self.tokens)
        if not tenant.admin:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, "only an admin token may register switches")
        if not _SWITCH_ID.fullmatch(request.switch_id):
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"switch_id {request.switch_id[:80]!r} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
            )
        data = _check_address(context, request.data_address, "data_address")
        agent_addr = _check_address(context, request.agent_address, "agent_address")
        token = next(v for k, v in context.invocation_metadata() if k == "authorization").split(" ", 1)[1]
        probe = SwitchRecord(request.switch_id, data, agent_addr, pb.SwitchInfo(), token)
        try:
            info = self._agent(probe).GetInfo(pb.GetInfoRequest(), timeout=self.agent_timeout)
        except grpc.RpcError as exc:
            _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"cannot reach the SwitchAgent at {agent_addr} with this token: "
                f"{exc.code().name}: {exc.details()}",
            )
        if request.HasField("info") and request.info != info:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"info disagrees with what the SwitchAgent at {agent_addr} reports ({info})",
            )
        if info.total_slots < 1 or info.max_workers < 1 or info.min_elements_per_packet < 1:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"the switch reports no capacity: {info}")
        if request.parent_switch_id and not _SWITCH_ID.fullmatch(request.parent_switch_id):
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"parent_switch_id {request.parent_switch_id[:80]!r} is not a switch id",
            )
        if request.parent_switch_id == request.switch_id:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a switch cannot be its own parent")
        rec = SwitchRecord(request.switch_id, data, agent_addr, info, token, request.parent_switch_id)
        with self.store.locked():
            self.store.put_switch(rec, time.time())
            self._reinstall(rec)
        log.info(
            "switch %s registered: data %s, agent %s, %d slots",
            rec.switch_id,
            data,
            agent_addr,
            info.total_slots,
        )
        return self._switch_message(rec)

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
        if not 0.1 <= interval <= 3600:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"interval_seconds must be 0.1-3600, got {interval:g}",
            )
        for job_id in request.job_ids:
            self._job_for(context, job_id, tenant)
        wake = threading.Event()
        context.add_callback(wake.set)
        while context.is_active():
            jobs = [j for j in self.store.jobs(list(request.job_ids) or None) if self._visible(tenant, j)]
            snap = pb.StatsSnapshot(time=time.time(), jobs=jobs)
            for sw_id in sorted({p.switch_id for j in jobs for p in j.placements}):
                sw = self.store.switch(sw_id)
                if sw is None:
                    continue
                try:
                    snap.switch_counters[sw_id].CopyFrom(
                        self._agent(sw).GetCounters(pb.GetCountersRequest(), timeout=self.agent_timeout)
                    )
                except grpc.RpcError as exc:
                    log.warning("counters of %s: %s", sw_id, exc.details())
            yield snap
            if wake.wait(interval):
                return

    def _pin_workers(self, sw: SwitchRecord, job_id: str) -> None:
        """Once every rank of ``sw`` has joined, fix its workers' addresses there (SetWorkers): its hosts
        as they joined, then its child switches' data-plane addresses. From then on it takes each
        worker's packets only from there, and a P4 switch replicates results to them."""
        job = self.store.job(job_id)
        if job is None:
            return
        shape = _shape(job)
        node = shape.get(sw.switch_id)
        if node is None:
            return
        members = [self.store.member(job_id, r) for r in range(node.first_rank, node.first_rank + node.hosts)]
        if any(m is None for m in members):
            return
        addresses = [m.address for m in members if m is not None]
        # its child switches, in worker-id order, send from their data-plane addresses
        for child in sorted(
            (c for c, n in shape.items() if n.parent == sw.switch_id), key=lambda c: shape[c].parent_worker
        ):
            record = self.store.switch(child)
            if record is None:
                return
            addresses.append(record.data_address)
        self._agent(sw).SetWorkers(
            pb.SetWorkersRequest(wire_job_id=job.wire_job_id, worker_addresses=addresses),
            timeout=self.agent_timeout,
        )

    # -- reconciliation ------------------------------------------------------------------------
    def _reinstall(self, sw: SwitchRecord) -> None:
        """Install every job placed on ``sw`` (ALREADY_EXISTS is fine: it kept them)."""
        for job in self.store.jobs():
            for p in job.placements:
                if p.switch_id != sw.switch_id:
                    continue
                try:
                    self._install(sw, job, p)
                    self._pin_workers(sw, job.job_id)
                    log.info("job %s installed again on %s", job.job_id, sw.switch_id)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                        log.warning("job %s on %s: %s", job.job_id, sw.switch_id, exc.details())

    def reconcile(self) -> None:
        """Put every stored job back on its switches (after a controller restart)."""
        for sw in self.store.switches():
            with self.store.locked():
                self._reinstall(sw)

    def _switch_message(self, sw: SwitchRecord) -> pb.Switch:
        used = sum(hi - lo for lo, hi in self.store.used_ranges(sw.switch_id))
        return pb.Switch(
            switch_id=sw.switch_id,
            data_address=sw.data_address,
            agent_address=sw.agent_address,
            info=sw.info,
            free_slots=max(0, sw.info.total_slots - used),
            parent_switch_id=sw.parent,
        )


@dataclass(frozen=True)
class _Node:
    """One switch of a job's placement: what it aggregates and where it sends its partial sums."""

    workers: int  # children: its hosts, then its child switches
    hosts: int  # workers of the job attached to it
    parent: str  # switch_id of its parent in the tree, "" for the root
    parent_worker: int  # its worker id at the parent
    first_rank: int  # ranks [first_rank, first_rank + hosts) are its hosts


def _shape(job: pb.Job) -> dict[str, _Node]:
    """The tree of a job from its spec and placements (single switch: one node with every worker)."""
    if not job.spec.workers_at:
        p = job.placements[0]
        return {p.switch_id: _Node(job.spec.workers, job.spec.workers, "", 0, 0)}
    parents = {p.switch_id: p.parent_switch_id for p in job.placements}
    hosts = dict(job.spec.workers_at)
    kids = {sw: sorted(c for c, par in parents.items() if par == sw) for sw in parents}
    first, rank = {}, 0
    for leaf in sorted(hosts):
        first[leaf] = rank
        rank += hosts[leaf]
    nodes = {}
    for sw, par in parents.items():
        index = hosts.get(par, 0) + kids[par].index(sw) if par else 0
        nodes[sw] = _Node(hosts.get(sw, 0) + len(kids[sw]), hosts.get(sw, 0), par, index, first.get(sw, 0))
    return nodes


def _free_gaps(used: list[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    gaps, at = [], 0
    for lo, hi in sorted(used):
        if lo > at:
            gaps.append((at, min(lo, total)))
        at = max(at, hi)
    if at < total:
        gaps.append((at, total))
    return [(lo, hi) for lo, hi in gaps if hi > lo]


def serve_controller(
    address: str,
    store: Store,
    tokens: Tokens,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    agent_tls_ca: str | None = None,
) -> tuple[grpc.Server, int, ControllerService]:
    """Start the controller on ``address`` (port 0 picks one); returns (server, port, servicer).

    Jobs stored from an earlier run are installed again on their switches in the background.
    """
    service = ControllerService(store, tokens, agent_tls_ca=agent_tls_ca)
    server, port, _ = make_server(
        address,
        tokens,
        [lambda s: pb_grpc.add_ControllerServicer_to_server(service, s)],
        [pb.DESCRIPTOR.services_by_name["Controller"].full_name],
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    threading.Thread(target=service.reconcile, name="netagg-reconcile", daemon=True).start()
    return server, port, service
