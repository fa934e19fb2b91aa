"""The SwitchAgent gRPC service (proto/netagg/v1/control.proto) for the Python switch.

The control plane installs and removes jobs and reads counters through it. Jobs change while packets
flow: every call takes the same lock as the switch's packet loop, between two datagrams.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from netagg import __version__
from netagg.protocol import MAX_ELEMENTS, MAX_SLOTS, MAX_WORKERS, parse_address
from netagg.rpc import Tokens, make_server
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc
from switch.core import Dataplane, JobConfig

__all__ = ["SwitchAgentService", "job_config", "send_address", "serve_agent", "serve_switch_agent"]

T = TypeVar("T")


def send_address(text: str, what: str) -> tuple[str, int]:
    """A ``HOST:PORT`` datagrams can be sent to (not port 0); ValueError naming ``what`` otherwise."""
    try:
        host, port = parse_address(text)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if port == 0:
        raise ValueError(f"{what}: port 0 is not an address to send to ({text!r})")
    return host, port


class SwitchAgentService(pb_grpc.SwitchAgentServicer):
    """SwitchAgent over a :class:`Dataplane`; ``lock`` is the one the packet loop holds per datagram."""

    def __init__(self, dataplane: Dataplane, lock: threading.Lock, *, total_slots: int = MAX_SLOTS) -> None:
        if not 1 <= total_slots <= MAX_SLOTS:
            raise ValueError(f"total_slots must be 1-{MAX_SLOTS}, got {total_slots}")
        self.dataplane = dataplane
        self.lock = lock
        self.total_slots = total_slots

    def _locked(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        with self.lock:
            try:
                return fn()
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except KeyError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]) if exc.args else "not found")
        raise AssertionError("unreachable")  # abort raises

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.SwitchInfo:
        return pb.SwitchInfo(
            kind="python",
            total_slots=self.total_slots,
            min_elements_per_packet=1,
            max_elements_per_packet=MAX_ELEMENTS,
            max_workers=MAX_WORKERS,
            version=__version__,
        )

    def InstallJob(
        self, request: pb.InstallJobRequest, context: grpc.ServicerContext
    ) -> pb.InstallJobResponse:
        r = request
        try:
            if r.slot_base + r.slots > self.total_slots:
                raise ValueError(
                    f"slots [{r.slot_base}, {r.slot_base + r.slots}) lie outside this switch's "
                    f"{self.total_slots} slots"
                )
            cfg = job_config(r)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self.lock:
            if any(j.job_id == cfg.job_id for j in self.dataplane.jobs):
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"job {cfg.job_id} is already installed")
        self._locked(context, lambda: self.dataplane.install(cfg))
        return pb.InstallJobResponse()

    def RemoveJob(self, request: pb.RemoveJobRequest, context: grpc.ServicerContext) -> pb.RemoveJobResponse:
        self._locked(context, lambda: self.dataplane.remove(request.wire_job_id))
        return pb.RemoveJobResponse()

    def SetWorkers(
        self, request: pb.SetWorkersRequest, context: grpc.ServicerContext
    ) -> pb.SetWorkersResponse:
        try:
            addresses = tuple(send_address(a, "worker_addresses[]") for a in request.worker_addresses)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._locked(context, lambda: self.dataplane.set_addresses(request.wire_job_id, addresses))
        return pb.SetWorkersResponse()

    def GetCounters(self, request: pb.GetCountersRequest, context: grpc.ServicerContext) -> pb.Counters:
        return _counters(self._locked(context, self.dataplane.stats))

    def ResetCounters(self, request: pb.ResetCountersRequest, context: grpc.ServicerContext) -> pb.Counters:
        return _counters(self._locked(context, self.dataplane.reset_counters))


def job_config(r: pb.InstallJobRequest) -> JobConfig:
    """An InstallJob request as a :class:`JobConfig` (ValueError naming the field that is wrong); every
    SwitchAgent implementation validates requests with it."""
    if r.wire_job_id > 0xFFFF:
        raise ValueError(f"wire_job_id must be 0-65535, got {r.wire_job_id}")
    return JobConfig(
        job_id=r.wire_job_id,
        workers=r.workers,
        slots=r.slots,
        elements=r.elements_per_packet,
        slot_base=r.slot_base,
        total_workers=r.total_workers or None,
        addresses=tuple(send_address(a, "worker_addresses[]") for a in r.worker_addresses) or None,
        multicast=send_address(r.multicast_group, "multicast_group") if r.multicast_group else None,
        parent=send_address(r.parent_address, "parent_address") if r.parent_address else None,
        parent_worker=r.parent_worker_id,
    )


def _counters(stats: dict[str, Any]) -> pb.Counters:
    return pb.Counters(
        counters={k: int(v) for k, v in stats["counters"].items()},
        drops={k: int(v) for k, v in stats["drops"].items()},
    )


def serve_agent(
    dataplane: Dataplane,
    lock: threading.Lock,
    address: str,
    tokens: Tokens,
    *,
    total_slots: int = MAX_SLOTS,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> tuple[grpc.Server, int]:
    """Start the Python switch's SwitchAgent on ``address``; returns (server, bound port)."""
    service = SwitchAgentService(dataplane, lock, total_slots=total_slots)
    return serve_switch_agent(service, address, tokens, tls_cert=tls_cert, tls_key=tls_key)


def serve_switch_agent(
    service: pb_grpc.SwitchAgentServicer,
    address: str,
    tokens: Tokens,
    *,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> tuple[grpc.Server, int]:
    """Serve any SwitchAgent implementation (the Python switch's, the BMv2 driver's) on ``address`` with
    bearer-token checks, health checking and reflection (TLS with ``tls_cert``/``tls_key``); returns
    (server, bound port)."""
    server, port, _ = make_server(
        address,
        tokens,
        [lambda s: pb_grpc.add_SwitchAgentServicer_to_server(service, s)],
        [pb.DESCRIPTOR.services_by_name["SwitchAgent"].full_name],
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_workers=4,
    )
    return server, port
