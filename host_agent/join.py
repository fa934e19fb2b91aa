"""Joining a job: at the controller (gRPC, which says where the switch is) and at the switch (JOIN until
JOIN_ACK, docs/protocol.md "Joining"). The switch handshake is a socket-free state machine; the worker
sends its packet and feeds it what comes back. A worker that closes leaves the job at the controller
(:func:`leave_controller`), so the controller can tell an idle job from a running one."""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from host_agent.errors import ControllerError, NetAggError, NetAggTimeout, RefusedError
from host_agent.session import JobParams
from netagg.protocol import (
    HEADER,
    HEADER_SIZE,
    Flag,
    MsgType,
    Reason,
    describe_op,
    join_packet,
    parse_address,
    parse_join_ack,
)

__all__ = [
    "JoinHandshake",
    "format_address",
    "join_controller",
    "leave_controller",
    "refusal",
    "wait_for_controller",
]

log = logging.getLogger(__name__)

_JOIN_ACK, _PENDING, _REFUSE = int(MsgType.JOIN_ACK), int(MsgType.PENDING), int(MsgType.REFUSE)


class JoinHandshake:
    """One worker's JOIN of ``job`` as ``worker_id``: :attr:`packet` is sent (again after each
    :meth:`next_wait`) until :meth:`on_datagram` returns the job's parameters. ``key`` is the job's key
    (0: none); ``prev_round`` and ``prev_epoch`` the round a rejoin continues and the epoch this worker
    had in it (0: a fresh join)."""

    def __init__(
        self,
        job: int,
        worker_id: int,
        incarnation: int | None = None,
        *,
        key: int = 0,
        prev_round: int = 0,
        prev_epoch: int = 0,
        switch: str = "",
    ) -> None:
        self.job, self.worker_id, self.switch = job, worker_id, switch
        self.incarnation = incarnation if incarnation is not None else (secrets.randbits(32) or 1)
        self.packet = join_packet(
            job, worker_id, self.incarnation, key=key, prev_round=prev_round, prev_epoch=prev_epoch
        )
        self.heard = False  # the switch answered something for this JOIN
        self.joined_bitmap = 0  # who had joined, from the last PENDING
        self.stale = 0  # datagrams that answered no JOIN of this handshake
        self._wait = 0.02

    def next_wait(self) -> float:
        """Seconds to wait for an answer before sending the JOIN again (doubling up to 0.25 s, well
        inside the switch's join refresh of 2 s)."""
        wait, self._wait = self._wait, min(self._wait * 2, 0.25)
        return wait

    def on_datagram(self, buf: Any, nbytes: int) -> JobParams | None:
        """The job's parameters once the JOIN_ACK for this JOIN arrives; None for anything else (a
        PENDING records who is in; what belongs to another JOIN is counted in :attr:`stale`). A REFUSE
        of this JOIN raises :class:`RefusedError` naming the cause."""
        if nbytes < HEADER_SIZE:
            self.stale += 1
            return None
        _, mtype, flags, epoch, job, worker, _, _, seq, exp, _, bitmap = HEADER.unpack_from(buf)
        if job != self.job or worker != self.worker_id or seq != self.incarnation:
            self.stale += 1
            return None
        self.heard = True
        if mtype == _PENDING:
            self.joined_bitmap = bitmap
        elif mtype == _REFUSE:
            raise refusal(exp, 0, switch=self.switch, job=self.job, worker=self.worker_id)
        elif mtype == _JOIN_ACK and (ack := parse_join_ack(buf, nbytes)) is not None:
            return JobParams(
                job=self.job,
                worker_id=self.worker_id,
                epoch=epoch,
                slot_base=ack["slot_base"],
                slots=ack["slots"],
                elements=ack["elements"],
                fanin=ack["fanin"],
                total_workers=ack["total_workers"],
                group=ack["group"],
                group_port=ack["group_port"],
                round=ack["round"],
                resume=bool(flags & Flag.RESUME),
            )
        return None

    def missing(self, fanin: int) -> list[int]:
        """The workers the switch's last PENDING did not list."""
        return [w for w in range(fanin) if not self.joined_bitmap >> w & 1]

    def timeout_error(self, switch: str, world_size: int, join_timeout: float) -> NetAggTimeout:
        if not self.heard:
            return NetAggTimeout(
                f"switch {switch} did not answer JOIN for job {self.job} within {join_timeout:g}s "
                f"(is it running, and configured for job {self.job}?)"
            )
        return NetAggTimeout(
            f"job {self.job}: workers {self.missing(world_size)} did not join within {join_timeout:g}s"
        )


def refusal(code: int, detail: int, *, switch: str, job: int, worker: int, context: str = "") -> RefusedError:
    """The error for a REFUSE with reason ``code`` (docs/protocol.md, "Refusals") that ends a JOIN or a
    call; ``context`` says what this worker was doing (its call's size, for count_mismatch)."""
    try:
        reason = Reason(code).name
    except ValueError:
        reason = f"reason {code}"
    switch = f"switch {switch}" if switch else "the switch"
    if reason == "unknown_job":
        text = f"{switch} has no job {job} (it was deleted, or never installed there)"
    elif reason == "bad_key":
        text = (
            f"{switch} refused the key of job {job} (bad_key): give the job's key "
            "(Worker(key=...), $NETAGG_KEY or --key-file)"
        )
    elif reason == "wrong_source":
        text = (
            f"{switch} takes worker {worker}'s packets for job {job} from another address (the "
            "job's worker addresses are fixed, or another process joined as this worker)"
        )
    elif reason == "count_mismatch":
        text = (
            f"worker {worker} sent a chunk whose element count differs from the {detail} another worker "
            f"sent for it: the workers called with different sizes{context}"
        )
    elif reason == "op_mismatch":
        text = (
            f"{switch} has this chunk as part of {describe_op(detail)} from another worker (op_mismatch): "
            f"the workers called different collectives (or ops, or roots) in the same order{context}"
        )
    else:
        text = f"{switch} refused worker {worker} of job {job} ({reason})"
    return RefusedError(reason, text)


def wait_for_controller(
    ch: Any,
    controller: str,
    retry_for: float,
    *,
    report: Callable[[str], None] | None = None,
) -> None:
    """Return once the controller at ``controller`` answers on the gRPC channel ``ch`` (its standard
    health service, which needs no token). If it does not, say so at once ("controller HOST:PORT
    unreachable (...); retrying in 1 s": a WARNING log line, or ``report(line)`` when given), then wait
    for it 1, 2, 4, ... s at a time (a health check that waits for the connection) until ``retry_for``
    seconds have passed since the first try, and raise NetAggError naming the controller. An answer of
    any kind, even a refusal, means it is reachable."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    check = health_pb2_grpc.HealthStub(ch).Check
    request = health_pb2.HealthCheckRequest(service="netagg.v1.Controller")
    start, wait, tries = time.monotonic(), 1.0, 0

    def down(timeout: float, wait_for_ready: bool) -> str:
        """ "" if it answered within ``timeout``, else why not."""
        try:
            check(request, timeout=timeout, wait_for_ready=wait_for_ready)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # the last part of gRPC's text says it ("...: Connection refused")
                return f"{exc.code().name}: {(exc.details() or '').strip().rsplit(': ', 1)[-1]}"
        return ""

    why = first = down(max(0.1, min(2.0, retry_for)), False)  # a refused connection fails at once
    while why:
        tries += 1
        spent = time.monotonic() - start
        left = retry_for - spent
        if left <= 0:
            raise NetAggError(
                f"controller {controller} unreachable ({first}); gave up after {tries} tries in "
                f"{spent:.1f} s (is `netagg controller` running there?)"
            )
        pause = min(wait, left)
        line = f"controller {controller} unreachable ({first}); retrying in {pause:.2g} s"
        if tries > 1:
            log.debug("%s", line)
        elif report is not None:
            report(line)
        else:
            log.warning("%s", line)
        began = time.monotonic()
        why = down(pause, True)  # returns as soon as it answers, or after the pause
        if why and (rest := pause - (time.monotonic() - began)) > 0:
            time.sleep(rest)  # failed early: keep the pause
        wait *= 2


def join_controller(
    controller: str,
    job: str,
    rank: int,
    token: str | None,
    tls_ca: str | None,
    replace: bool,
    bind: str | None,
    *,
    retry_for: float = 30.0,
) -> tuple[socket.socket, Any]:
    """Bind the worker's socket and join ``job`` at the controller with its address; returns the socket
    and the JoinJobResponse (its ``key`` is the job's key, its ``worker_address`` what
    :func:`leave_controller` takes). A controller that does not answer is reported at once and tried
    again with doubling waits for ``retry_for`` seconds (:func:`wait_for_controller`), then NetAggError
    names it; gRPC errors become :class:`ControllerError` (a NetAggError) with the controller's message
    and status code."""
    import grpc

    from netagg.rpc import channel, read_token
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    chost, cport = parse_address(controller)
    if cport == 0:
        raise ValueError(f"controller address {controller!r} needs a port")
    host, port = parse_address(bind) if bind else ("0.0.0.0", 0)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
        port = sock.getsockname()[1]
        unbound = host in ("0.0.0.0", "::")
        if unbound:
            # The address others see: the one this host uses on its route to the controller.
            with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
                probe.connect((chost, cport))
                host = probe.getsockname()[0]
        with channel(controller, read_token(token), tls_ca=tls_ca) as ch:
            wait_for_controller(ch, controller, retry_for)
            stub = pb_grpc.ControllerStub(ch)
            try:
                joined = stub.JoinJob(
                    pb.JoinJobRequest(
                        job_id=job, rank=rank, address=format_address(host, port), replace=replace
                    ),
                    timeout=30,
                )
                if unbound:
                    # The switch sees the address of this host's route to the switch: if that is not
                    # the one toward the controller, say so (the switch takes packets only from there).
                    shost, sport = parse_address(joined.switch_address)
                    with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
                        probe.connect((shost, sport))
                        if probe.getsockname()[0] != host:
                            host = probe.getsockname()[0]
                            request = pb.JoinJobRequest(
                                job_id=job, rank=rank, address=format_address(host, port), replace=True
                            )
                            joined = stub.JoinJob(request, timeout=30)
            except grpc.RpcError as exc:
                code = exc.code().name
                raise ControllerError(f"controller {controller}: {code}: {exc.details()}", code) from None
    except BaseException:
        sock.close()
        raise
    return sock, joined


def leave_controller(
    controller: str,
    job: str,
    rank: int,
    address: str,
    token: str | None,
    tls_ca: str | None,
    *,
    timeout: float = 1.0,
) -> bool:
    """Tell the controller that ``rank``, joined from ``address`` (``JoinJobResponse.worker_address``),
    leaves ``job``: best effort, for a worker that closes. Returns whether the controller marked it as
    left; any failure (controller gone, ``timeout`` seconds passed, the rank taken over by another
    worker) is logged at INFO and returns False. Never raises for gRPC errors."""
    import grpc

    from netagg.rpc import channel, read_token
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    try:
        with channel(controller, read_token(token), tls_ca=tls_ca) as ch:
            reply = pb_grpc.ControllerStub(ch).LeaveJob(
                pb.LeaveJobRequest(job_id=job, rank=rank, address=address), timeout=timeout
            )
    except grpc.RpcError as exc:
        log.info(
            "rank %d could not leave job %s at %s: %s: %s",
            rank,
            job,
            controller,
            exc.code().name,
            exc.details(),
        )
        return False
    except (ValueError, OSError) as exc:  # a bad address or token file
        log.info("rank %d could not leave job %s at %s: %s", rank, job, controller, exc)
        return False
    if not reply.left:
        log.info(
            "rank %d of job %s is not joined from %s at %s: nothing to leave", rank, job, address, controller
        )
    return bool(reply.left)


def format_address(host: str, port: int) -> str:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
