"""The SwitchAgent gRPC service (proto/netagg/v1/control.proto) over any :class:`SwitchBackend`.

The control plane installs and removes jobs and reads counters through it. The servicer is thin: it turns
requests into :class:`~switch.core.JobConfig` and addresses (INVALID_ARGUMENT naming the field that is
wrong), calls the backend, and maps the backend's exceptions (:mod:`switch.backend`) to status codes in
:data:`STATUS` — the one place where that happens for every kind of switch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from netagg.protocol import MAX_SLOTS, parse_address
from netagg.rpc import Tokens, make_server
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc
from switch.backend import (
    AlreadyExists,
    BackendError,
    Counters,
    InvalidArgument,
    NotFound,
    PythonBackend,
    ResourceExhausted,
    SwitchBackend,
    Unavailable,
)
from switch.core import Dataplane, JobConfig

__all__ = [
    "STATUS",
    "SwitchAgentService",
    "job_config",
    "job_counters",
    "send_address",
    "serve_agent",
    "serve_backend",
    "serve_switch_agent",
]

#: A backend's exception -> the status code the SwitchAgent answers with (the base class: INTERNAL).
STATUS: dict[type[BackendError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def send_address(text: str, what: str) -> tuple[str, int]:
    """A ``HOST:PORT`` datagrams can be sent to (not port 0); ValueError naming ``what`` otherwise."""
    try:
        host, port = parse_address(text)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if port == 0:
        raise ValueError(f"{what}: port 0 is not an address to send to ({text!r})")
    return host, port


@contextmanager
def _status(context: grpc.ServicerContext) -> Iterator[None]:
    """Abort the call with the status code of a backend's exception (ValueError: INVALID_ARGUMENT)."""
    try:
        yield
    except ValueError as exc:  # a request that does not make a JobConfig or an address
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise  # abort() raises; a context whose abort returns must not turn the error into a reply
    except BackendError as exc:
        code = next((c for t, c in STATUS.items() if isinstance(exc, t)), grpc.StatusCode.INTERNAL)
        context.abort(code, str(exc) if code != grpc.StatusCode.INTERNAL else f"{type(exc).__name__}: {exc}")
        raise


class SwitchAgentService(pb_grpc.SwitchAgentServicer):
    """SwitchAgent over ``backend`` (:class:`switch.backend.PythonBackend`, :class:`switch.bmv2.Bmv2Backend`).

    Example::

        service = SwitchAgentService(PythonBackend(Dataplane(), threading.Lock()))
        server, port = serve_switch_agent(service, "127.0.0.1:0", Tokens.single("secret-token"))
    """

    def __init__(self, backend: SwitchBackend) -> None:
        self.backend = backend

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.SwitchInfo:
        with _status(context):
            info = self.backend.info()
        return pb.SwitchInfo(
            kind=info.kind,
            total_slots=info.total_slots,
            min_elements_per_packet=info.min_elements_per_packet,
            max_elements_per_packet=info.max_elements_per_packet,
            max_workers=info.max_workers,
            version=info.version,
        )

    def InstallJob(
        self, request: pb.InstallJobRequest, context: grpc.ServicerContext
    ) -> pb.InstallJobResponse:
        with _status(context):
            self.backend.install(job_config(request))
        return pb.InstallJobResponse()

    def RemoveJob(self, request: pb.RemoveJobRequest, context: grpc.ServicerContext) -> pb.RemoveJobResponse:
        with _status(context):
            self.backend.remove(request.wire_job_id)
        return pb.RemoveJobResponse()

    def SetWorkers(
        self, request: pb.SetWorkersRequest, context: grpc.ServicerContext
    ) -> pb.SetWorkersResponse:
        with _status(context):
            addresses = [send_address(a, "worker_addresses[]") for a in request.worker_addresses]
            self.backend.set_workers(request.wire_job_id, addresses)
        return pb.SetWorkersResponse()

    def GetCounters(self, request: pb.GetCountersRequest, context: grpc.ServicerContext) -> pb.Counters:
        with _status(context):
            counters = _counters(self.backend.counters())
            # per job where the backend counts per job (PythonBackend.job_stats; BMv2 does not)
            job_stats = getattr(self.backend, "job_stats", None)
            if job_stats is not None:
                counters.jobs.extend(job_counters(job_stats()))
            return counters

    def ResetCounters(self, request: pb.ResetCountersRequest, context: grpc.ServicerContext) -> pb.Counters:
        with _status(context):
            return _counters(self.backend.counters(reset=True))


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
        key=r.key,
        # one key per job: a switch with a parent JOINs there with the job's key (control.proto)
        parent_key=r.key if r.parent_address else 0,
    )


def _counters(counters: Counters) -> pb.Counters:
    return pb.Counters(counters=counters["counters"], drops=counters["drops"])


def job_counters(stats: Mapping[int, Mapping[str, Any]]) -> list[pb.JobCounters]:
    """``Dataplane.job_stats()`` as JobCounters, in wire job id order: the integer entries are counters,
    ``drops`` the drops by reason, ``joined``, ``epoch`` and ``running`` the job's round now."""
    out = []
    for job_id in sorted(stats):
        s = stats[job_id]
        c = pb.JobCounters(
            wire_job_id=job_id,
            joined=int(s.get("joined", 0)),
            epoch=int(s.get("epoch", 0)),
            running=bool(s.get("running", False)),
        )
        for name, value in s.items():
            if name == "drops":
                c.drops.update({r: int(n) for r, n in value.items()})
            elif name not in ("joined", "epoch", "running") and not isinstance(value, Mapping):
                c.counters[name] = int(value)
        out.append(c)
    return out


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
    backend = PythonBackend(dataplane, lock, total_slots=total_slots)
    return serve_backend(backend, address, tokens, tls_cert=tls_cert, tls_key=tls_key)


def serve_backend(
    backend: SwitchBackend,
    address: str,
    tokens: Tokens,
    *,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> tuple[grpc.Server, int]:
    """Serve ``backend``'s SwitchAgent on ``address``; returns (server, bound port)."""
    return serve_switch_agent(
        SwitchAgentService(backend), address, tokens, tls_cert=tls_cert, tls_key=tls_key
    )


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
