"""The controller's side of the switches' SwitchAgent services: stubs, installs, removals, pinning.

One gRPC channel per (agent address, token), kept for the controller's life. A job is installed on every
switch of its placement, with its key, or on none (:meth:`SwitchAgents.install_all`); once all of a
switch's ranks have joined, their addresses are pinned there (:meth:`SwitchAgents.pin_workers`); a
switch that registers or answers again gets back the jobs placed on it (:meth:`SwitchAgents.reinstall`).
:meth:`SwitchAgents.check` is the health check (:mod:`controller.monitor` calls it).

Example::

    agents = SwitchAgents(store, tls_ca=None, timeout=5.0)
    agents.install_all(placement.switches, job, key)  # ControlError(UNAVAILABLE) if one refuses
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

import grpc
from grpc import StatusCode

from controller.errors import ControlError
from controller.placement import job_shape
from controller.store import Store, SwitchRecord
from netagg.rpc import channel as rpc_channel
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc

__all__ = ["AGENT_TIMEOUT", "SwitchAgents"]

log = logging.getLogger(__name__)

#: Seconds the controller waits for a SwitchAgent's answer.
AGENT_TIMEOUT = 5.0


class SwitchAgents:
    """SwitchAgent clients over the switches in ``store`` (it reads placements, members and records)."""

    def __init__(self, store: Store, *, tls_ca: str | None = None, timeout: float = AGENT_TIMEOUT) -> None:
        self.store = store
        self.tls_ca = tls_ca
        self.timeout = timeout
        self._stubs: dict[tuple[str, str], tuple[grpc.Channel, pb_grpc.SwitchAgentStub]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every channel."""
        with self._lock:
            for ch, _ in self._stubs.values():
                ch.close()
            self._stubs.clear()

    def stub(self, sw: SwitchRecord) -> pb_grpc.SwitchAgentStub:
        """The SwitchAgent of ``sw``, called with the token it registered with."""
        key = (sw.agent_address, sw.agent_token)
        with self._lock:
            if key not in self._stubs:
                ch = rpc_channel(sw.agent_address, sw.agent_token, tls_ca=self.tls_ca)
                self._stubs[key] = (ch, pb_grpc.SwitchAgentStub(ch))
            return self._stubs[key][1]

    def info(self, sw: SwitchRecord) -> pb.SwitchInfo:
        """What the switch reports about itself; ``UNAVAILABLE`` if it cannot be asked."""
        try:
            return self.stub(sw).GetInfo(pb.GetInfoRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise ControlError(
                StatusCode.UNAVAILABLE,
                f"cannot reach the SwitchAgent at {sw.agent_address} with this token: "
                f"{exc.code().name}: {exc.details()}",
            ) from None

    def check(self, sw: SwitchRecord, timeout: float) -> str:
        """The health check: "" if the SwitchAgent answers GetInfo within ``timeout`` seconds, else the
        error ("UNAVAILABLE: ...")."""
        try:
            self.stub(sw).GetInfo(pb.GetInfoRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return ""

    def read_counters(self, sw: SwitchRecord) -> pb.Counters | grpc.RpcError:
        """The switch's counters, or the error its SwitchAgent answered with."""
        try:
            return self.stub(sw).GetCounters(pb.GetCountersRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            return exc

    def counters(self, sw: SwitchRecord, *, quiet: bool = False) -> pb.Counters | None:
        """The switch's counters, or None (logged, at DEBUG if ``quiet``) if it does not answer."""
        try:
            return self.stub(sw).GetCounters(pb.GetCountersRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            log.log(
                logging.DEBUG if quiet else logging.WARNING, "counters of %s: %s", sw.switch_id, exc.details()
            )
            return None

    def _install(self, sw: SwitchRecord, job: pb.Job, placement: pb.Placement, key: int) -> None:
        """Install ``job``'s part on ``sw`` with the job's ``key``; raises grpc.RpcError (ALREADY_EXISTS
        if it is there)."""
        node = job_shape(job)[sw.switch_id]
        parent = self.store.switch(node.parent) if node.parent else None
        self.stub(sw).InstallJob(
            pb.InstallJobRequest(
                wire_job_id=job.wire_job_id,
                workers=node.workers,
                total_workers=job.spec.workers,
                slot_base=placement.slot_base,
                slots=placement.slots,
                elements_per_packet=job.spec.elements_per_packet,
                parent_address=parent.data_address if parent is not None else "",
                parent_worker_id=node.parent_worker,
                key=key,
            ),
            timeout=self.timeout,
        )

    def install_all(self, switches: Sequence[tuple[SwitchRecord, str]], job: pb.Job, key: int) -> None:
        """Install ``job`` with its ``key`` on each of ``switches`` (in the order of ``job.placements``),
        all or nothing:
        if one refuses, it is removed again from those that took it and ``UNAVAILABLE`` says
        which switch failed and why."""
        installed: list[SwitchRecord] = []
        for (sw, _), placement in zip(switches, job.placements, strict=True):
            try:
                self._install(sw, job, placement, key)
                installed.append(sw)
            except grpc.RpcError as exc:
                for done in installed:
                    with contextlib.suppress(grpc.RpcError):
                        self.stub(done).RemoveJob(
                            pb.RemoveJobRequest(wire_job_id=job.wire_job_id), timeout=self.timeout
                        )
                raise ControlError(
                    StatusCode.UNAVAILABLE,
                    f"switch {sw.switch_id} ({sw.agent_address}) could not be programmed: "
                    f"{exc.code().name}: {exc.details()}",
                ) from None

    def remove(self, job: pb.Job) -> None:
        """Remove ``job`` from its switches. Failures are logged, not raised: its slots are freed anyway,
        and a switch that comes back gets only live jobs."""
        for p in job.placements:
            sw = self.store.switch(p.switch_id)
            if sw is None:
                continue
            try:
                self.stub(sw).RemoveJob(
                    pb.RemoveJobRequest(wire_job_id=job.wire_job_id), timeout=self.timeout
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    log.warning(
                        "job %s: removing it from %s failed: %s", job.job_id, sw.switch_id, exc.details()
                    )

    def _pin(self, sw: SwitchRecord, job_id: str) -> None:
        """Once every rank of ``sw`` has joined, fix its workers' addresses there (SetWorkers): its hosts
        as they joined, then its child switches' data-plane addresses. From then on it takes each
        worker's packets only from there, and a P4 switch replicates results to them. Raises
        grpc.RpcError."""
        job = self.store.job(job_id)
        if job is None:
            return
        shape = job_shape(job)
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
        self.stub(sw).SetWorkers(
            pb.SetWorkersRequest(wire_job_id=job.wire_job_id, worker_addresses=addresses),
            timeout=self.timeout,
        )

    def pin_workers(self, sw: SwitchRecord, job_id: str) -> None:
        """Pin ``sw``'s workers of the job if all have joined (see :meth:`_pin`); ``UNAVAILABLE``
        if the switch refuses."""
        try:
            self._pin(sw, job_id)
        except grpc.RpcError as exc:
            raise ControlError(
                StatusCode.UNAVAILABLE,
                f"switch {sw.switch_id} could not take the workers' addresses: "
                f"{exc.code().name}: {exc.details()}",
            ) from None

    def pin_inner(self, switches: Sequence[tuple[SwitchRecord, str]], job: pb.Job) -> None:
        """Pin right away the switches of a new job that have only switches below them (their workers'
        addresses are known already); failures are logged (a re-registration pins them again)."""
        shape = job_shape(job)
        for sw, _ in switches:
            if shape[sw.switch_id].hosts == 0:
                try:
                    self._pin(sw, job.job_id)
                except grpc.RpcError as exc:
                    log.warning("job %s: pinning children on %s: %s", job.job_id, sw.switch_id, exc.details())

    def reinstall(self, sw: SwitchRecord) -> None:
        """Install every job placed on ``sw`` (same slots, same key) and pin its workers where they were
        pinned (ALREADY_EXISTS is fine: it kept them). Failures are logged."""
        for job in self.store.jobs():
            for p in job.placements:
                if p.switch_id != sw.switch_id:
                    continue
                try:
                    self._install(sw, job, p, self.store.job_key(job.job_id))
                    self._pin(sw, job.job_id)
                    log.info("job %s installed again on %s", job.job_id, sw.switch_id)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                        log.warning("job %s on %s: %s", job.job_id, sw.switch_id, exc.details())
